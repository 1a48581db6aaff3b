// Package delegate is the delegate's side of the stage API: a client of
// every route internal/stage serves, for the CLI, the demo and whatever
// drives Slipway from Go.
package delegate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/internal/stage"
)

// Client calls one deployment's delegate API.
type Client struct {
	base   string
	http   *http.Client
	signer *signer // nil for a loopback endpoint
	as     string  // the caller named to slipway local
}

// Options say how to reach the API.
type Options struct {
	// HTTP is the HTTP client (default: one without a timeout of its own;
	// long-polls end on the server's side, at stage.MaxWait).
	HTTP *http.Client
	// Credentials sign every request to an endpoint that is not loopback
	// (API Gateway with IAM auth), with SigV4 for execute-api.
	Credentials aws.CredentialsProvider
	// Region is the endpoint's region (default: read from an
	// execute-api host name).
	Region string
	// Now is the signing clock (default time.Now).
	Now func() time.Time
	// As names the caller to slipway local (its X-Slipway-Caller header,
	// which it takes from loopback only); refused for any other endpoint,
	// where the caller is who signs.
	As string
}

// CallerHeader is slipway local's stand-in for API Gateway's IAM auth
// (local.CallerHeader).
const CallerHeader = "X-Slipway-Caller"

// New is a client of the API at endpoint (its base URL, without /v1). A
// loopback endpoint (slipway local) gets plain HTTP; any other is signed,
// so it needs credentials and a region.
func New(endpoint string, o Options) (*Client, error) {
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("endpoint %q: want an http or https URL", endpoint)
	}
	c := &Client{base: strings.TrimRight(endpoint, "/"), http: o.HTTP, as: o.As}
	if c.http == nil {
		c.http = &http.Client{}
	}
	if IsLoopback(u.Hostname()) {
		return c, nil
	}
	if o.As != "" {
		return nil, fmt.Errorf("--as %s: only slipway local (a loopback endpoint) takes a caller by name; elsewhere the caller is whoever signs", o.As)
	}
	if o.Credentials == nil {
		return nil, fmt.Errorf("endpoint %s is not loopback: its requests are signed, and no AWS credentials were given", u.Host)
	}
	region := o.Region
	if region == "" {
		region = regionOf(u.Hostname())
	}
	if region == "" {
		return nil, fmt.Errorf("endpoint %s: no region in the host name (not <api>.execute-api.<region>.amazonaws.com): give one", u.Host)
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	c.signer = &signer{credentials: o.Credentials, region: region, now: now, v4: v4.NewSigner()}
	return c, nil
}

// Error is an answer other than 2xx.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("stage API: %d %s: %s", e.Status, e.Code, e.Message)
}

// IsCode says whether err is the API's answer with code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// Create creates a stage (idempotent by its id); with wait > 0 the API
// answers once its VM is bound (or it ended), or when wait has passed.
func (c *Client) Create(ctx context.Context, spec *stage.Spec, wait time.Duration) (*stage.Status, error) {
	var st stage.Status
	return &st, c.do(ctx, http.MethodPost, "/v1/stages", waitQuery(wait), spec, &st)
}

func waitQuery(wait time.Duration) url.Values {
	q := url.Values{}
	if wait > 0 {
		q.Set("wait", wait.String())
	}
	return q
}

// Status is the stage's status; with wait > 0 the API answers when the
// stage's version is no longer version (a negative version: when the stage
// is released), or when wait has passed.
func (c *Client) Status(ctx context.Context, id string, version int64, wait time.Duration) (*stage.Status, error) {
	q := url.Values{}
	if wait > 0 {
		q.Set("wait", wait.String())
		if version >= 0 {
			q.Set("version", strconv.FormatInt(version, 10))
		}
	}
	var st stage.Status
	return &st, c.do(ctx, http.MethodGet, "/v1/stages/"+url.PathEscape(id), q, nil, &st)
}

// AddGroup gives an open stage its next group; with wait > 0 the API
// answers once the group's steps have ended (a background step: runs), or
// when wait has passed.
func (c *Client) AddGroup(ctx context.Context, id string, g *stage.Group, wait time.Duration) (*stage.Status, error) {
	var st stage.Status
	return &st, c.do(ctx, http.MethodPost, "/v1/stages/"+url.PathEscape(id)+"/groups", waitQuery(wait), g, &st)
}

// Step is one step's status; with wait > 0 the API answers when it ends or
// when wait has passed.
func (c *Client) Step(ctx context.Context, id, step string, wait time.Duration) (*stage.StepStatus, error) {
	var st stage.StepStatus
	return &st, c.do(ctx, http.MethodGet, stepPath(id, step), waitQuery(wait), nil, &st)
}

// Logs is the step's log from offset; with wait > 0 the API answers when
// there are bytes past offset, the log is done, or wait has passed.
func (c *Client) Logs(ctx context.Context, id, step string, offset int64, wait time.Duration) (*stage.LogChunk, error) {
	q := url.Values{"offset": {strconv.FormatInt(offset, 10)}}
	if wait > 0 {
		q.Set("wait", wait.String())
	}
	var chunk stage.LogChunk
	return &chunk, c.do(ctx, http.MethodGet, stepPath(id, step)+"/logs", q, nil, &chunk)
}

// CancelStep cancels one running step.
func (c *Client) CancelStep(ctx context.Context, id, step string) (*stage.StepStatus, error) {
	var st stage.StepStatus
	return &st, c.do(ctx, http.MethodPost, stepPath(id, step)+"/cancel", nil, nil, &st)
}

// Delete cancels the stage and releases its VM.
func (c *Client) Delete(ctx context.Context, id string) (*stage.Status, error) {
	var st stage.Status
	return &st, c.do(ctx, http.MethodDelete, "/v1/stages/"+url.PathEscape(id), nil, nil, &st)
}

// List lists the stages created within since (0: the API's default, a
// day), newest first, of pool only if given, at most limit (0: 20).
func (c *Client) List(ctx context.Context, since time.Duration, pool string, limit int) (*stage.StageList, error) {
	q := url.Values{}
	if since > 0 {
		q.Set("since", since.String())
	}
	if pool != "" {
		q.Set("pool", pool)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var l stage.StageList
	return &l, c.do(ctx, http.MethodGet, "/v1/stages", q, nil, &l)
}

// Pools is every pool's depth.
func (c *Client) Pools(ctx context.Context) (*stage.Pools, error) {
	var p stage.Pools
	return &p, c.do(ctx, http.MethodGet, "/v1/pools", nil, nil, &p)
}

// Follow long-polls the stage, calling seen with every new version, until
// the stage is released (then its last status) or ctx ends.
func (c *Client) Follow(ctx context.Context, id string, seen func(*stage.Status)) (*stage.Status, error) {
	var version int64 = -1
	var r retry
	for {
		wait := stage.MaxWait
		if version < 0 {
			wait = 0
		}
		st, err := c.Status(ctx, id, version, wait)
		if err != nil {
			if r.again(ctx, err) {
				continue
			}
			return nil, err
		}
		r = retry{}
		if st.Version != version {
			version = st.Version
			if seen != nil {
				seen(st)
			}
		}
		if st.Phase == stage.PhaseReleased {
			return st, nil
		}
	}
}

// FollowLog reads a step's log from the start until it is done, handing
// each chunk's bytes to seen as they come; pause is the wait between reads
// that brought nothing (each read is also a long-poll of the API).
func (c *Client) FollowLog(ctx context.Context, id, step string, pause time.Duration, seen func([]byte) error) error {
	var offset int64
	var r retry
	for {
		chunk, err := c.Logs(ctx, id, step, offset, stage.MaxWait)
		if err != nil {
			if r.again(ctx, err) {
				continue // from the same offset: nothing is read twice
			}
			return err
		}
		r = retry{}
		if err := seen(chunk.Data); err != nil {
			return err
		}
		offset = chunk.NextOffset
		if chunk.Done {
			return nil
		}
		if len(chunk.Data) == 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(pause):
			}
		}
	}
}

// retry carries a follower over a connection that broke or an API that
// asked to be asked again: reads are idempotent, and a watcher that gives
// up leaves a stage running with nobody watching.
type retry struct {
	since time.Time
	wait  time.Duration
}

// retryFor is how long a follower keeps trying before it gives up.
const retryFor = 2 * time.Minute

// again waits before the next attempt and says whether to make it: yes for
// a transient failure, while retryFor has not passed.
func (r *retry) again(ctx context.Context, err error) bool {
	if !transient(err) || ctx.Err() != nil {
		return false
	}
	if r.since.IsZero() {
		r.since, r.wait = time.Now(), 250*time.Millisecond
	}
	if time.Since(r.since) > retryFor {
		return false
	}
	select {
	case <-ctx.Done():
		return false
	case <-time.After(r.wait):
	}
	r.wait = min(2*r.wait, 5*time.Second)
	return true
}

// transient is a failure a later attempt may not meet: the connection (a
// reset, a refusal while the endpoint restarts, a timeout), or the API's
// 502, 503, 504 and 429.
func transient(err error) bool {
	var apiErr *Error
	if errors.As(err, &apiErr) {
		switch apiErr.Status {
		case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout, http.StatusTooManyRequests:
			return true
		}
		return false
	}
	var netErr net.Error
	var urlErr *url.Error
	return errors.As(err, &netErr) || errors.As(err, &urlErr) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}

func stepPath(id, step string) string {
	return "/v1/stages/" + url.PathEscape(id) + "/steps/" + url.PathEscape(step)
}

// maxAnswer bounds what one answer may hold: a log chunk is at most 1 MiB,
// four thirds of that in base64.
const maxAnswer = 4 << 20

func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	var body io.Reader
	var payload []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body, payload = bytes.NewReader(b), b
	}
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.as != "" {
		req.Header.Set(CallerHeader, c.as)
	}
	if c.signer != nil {
		if err := c.signer.sign(ctx, req, payload); err != nil {
			return err
		}
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if len(b) > maxAnswer {
		return fmt.Errorf("%s %s: the answer is over %d bytes", method, path, maxAnswer)
	}
	if resp.StatusCode/100 != 2 {
		var e stage.ErrorBody
		if json.Unmarshal(b, &e) != nil || e.Error.Code == "" {
			return &Error{Status: resp.StatusCode, Code: http.StatusText(resp.StatusCode), Message: agentapi.Truncate(string(b), 300)}
		}
		return &Error{Status: resp.StatusCode, Code: e.Error.Code, Message: e.Error.Message}
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s %s: the answer is not the API's JSON: %w", method, path, err)
	}
	return nil
}
