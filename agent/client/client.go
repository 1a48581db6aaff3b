// Package client is the Go client of the agent's API, used by the functions
// and `slipway local`: mutual TLS with kept-alive connections, retries on
// connection errors only (every call is idempotent), long-poll helpers and
// log streaming that resumes from an offset.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/internal/clock"
	"github.com/slipway-ci/slipway/internal/pki"
)

// ErrAgentRestarted means the agent's boot id changed while a step was
// followed: the step is lost, and running it again could run it twice.
var ErrAgentRestarted = errors.New("agent restarted")

// APIError is a 4xx or 5xx answer of the agent.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("agent: %d %s: %s", e.Status, e.Code, e.Message)
}

// Config says how to reach one agent.
type Config struct {
	// Addr is host:port of the agent.
	Addr string
	// LaunchID names the VM: the server certificate must be issued for
	// pki.ServerName(LaunchID).
	LaunchID string
	// RootCAs verify the server certificate (the deployment CA).
	RootCAs *x509.CertPool
	// Certificate returns the client certificate; it is called for each new
	// connection, so a renewed certificate is picked up.
	Certificate func() (*tls.Certificate, error)
	// Retries of a call that failed to connect (default 4); Backoff the
	// first pause (default 100 ms), doubled each time.
	Retries int
	Backoff time.Duration
}

// Client talks to one agent. It is safe for concurrent use.
type Client struct {
	base string
	// http is the client's own: HTTP/1.1. group is what Multiplexed
	// returns: HTTP/2 over one connection, sharing http's HTTP/1.1 pool for
	// an agent without HTTP/2.
	http    *http.Client
	group   *Client
	retries int
	backoff time.Duration
}

// New returns a client for the agent in cfg.
func New(cfg Config) (*Client, error) {
	if err := pki.ValidateLaunchID(cfg.LaunchID); err != nil {
		return nil, fmt.Errorf("agent client: %w", err)
	}
	if cfg.RootCAs == nil || cfg.Certificate == nil {
		return nil, errors.New("agent client: root CAs and a client certificate are required")
	}
	if _, _, err := net.SplitHostPort(cfg.Addr); err != nil {
		return nil, fmt.Errorf("agent client: address %q: %w", cfg.Addr, err)
	}
	if cfg.Retries == 0 {
		cfg.Retries = 4
	}
	if cfg.Backoff == 0 {
		cfg.Backoff = 100 * time.Millisecond
	}
	tlsConfig := &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    cfg.RootCAs,
		// The address is an IP; the name checked is the VM's.
		ServerName: pki.ServerName(cfg.LaunchID),
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return cfg.Certificate()
		},
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	h1 := newHTTP1(dialer, tlsConfig)
	c := &Client{base: "https://" + cfg.Addr, http: &http.Client{Transport: h1}, retries: cfg.Retries, backoff: cfg.Backoff}
	group := *c
	group.http = &http.Client{Transport: newMultiplexed(dialer, tlsConfig, h1)}
	c.group, group.group = &group, &group
	return c, nil
}

// Multiplexed returns the client for calls made side by side, such as the
// starts and polls of a group's steps: they share one HTTP/2 connection
// (so one TLS handshake) instead of a connection each. Single calls are
// faster through c itself. Both share their connections with each other.
func (c *Client) Multiplexed() *Client { return c.group }

// StaticCertificate returns a Config.Certificate that always returns cert.
func StaticCertificate(cert tls.Certificate) func() (*tls.Certificate, error) {
	return func() (*tls.Certificate, error) { return &cert, nil }
}

// Close drops idle connections, of Multiplexed's too.
func (c *Client) Close() { c.group.http.CloseIdleConnections() }

// Health returns the agent's health.
func (c *Client) Health(ctx context.Context) (*agentapi.Health, error) {
	var h agentapi.Health
	return &h, c.call(ctx, http.MethodGet, "/v1/health", "", nil, &h)
}

// WaitHealthy asks for the agent's health until it answers, every interval,
// for at most timeout: a VM's agent is not up the moment its instance is. It
// returns the last error when the agent never answered.
func (c *Client) WaitHealthy(ctx context.Context, timeout, interval time.Duration) (*agentapi.Health, error) {
	deadline := time.Now().Add(timeout)
	for {
		h, err := c.Health(ctx)
		if err == nil {
			return h, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("agent did not answer in %s: %w", timeout, err)
		}
		if err := clock.Sleep(ctx, interval); err != nil {
			return nil, err
		}
	}
}

// BindStage binds the agent to a stage; binding again with the same spec is a
// no-op.
func (c *Client) BindStage(ctx context.Context, stage *agentapi.Stage) (*agentapi.Health, error) {
	var h agentapi.Health
	return &h, c.call(ctx, http.MethodPut, "/v1/stage", stage.ID, stage, &h)
}

// DestroyStage cancels the stage's steps, removes its files and returns its
// usage; repeating it returns the same usage.
func (c *Client) DestroyStage(ctx context.Context, stageID string) (*agentapi.Usage, error) {
	var u agentapi.Usage
	return &u, c.call(ctx, http.MethodDelete, "/v1/stage", stageID, nil, &u)
}

// StartStep starts a step; starting it again with the same spec returns its
// current status.
func (c *Client) StartStep(ctx context.Context, stageID, stepID string, spec *agentapi.Step) (*agentapi.StepStatus, error) {
	return c.StartStepWait(ctx, stageID, stepID, spec, 0)
}

// StartStepWait starts a step and, with wait > 0, waits up to wait for it to
// end in the same call, so that a short step costs one round trip.
func (c *Client) StartStepWait(ctx context.Context, stageID, stepID string, spec *agentapi.Step, wait time.Duration) (*agentapi.StepStatus, error) {
	path := "/v1/steps/" + url.PathEscape(stepID)
	if wait > 0 {
		path += "?wait=" + wait.String()
	}
	var st agentapi.StepStatus
	return &st, c.call(ctx, http.MethodPut, path, stageID, spec, &st)
}

// StepStatus returns a step's status; with wait > 0 the agent answers when
// the step ends or wait has passed.
func (c *Client) StepStatus(ctx context.Context, stageID, stepID string, wait time.Duration) (*agentapi.StepStatus, error) {
	path := "/v1/steps/" + url.PathEscape(stepID)
	if wait > 0 {
		path += "?wait=" + wait.String()
	}
	var st agentapi.StepStatus
	return &st, c.call(ctx, http.MethodGet, path, stageID, nil, &st)
}

// CancelStep stops a step (SIGTERM, then SIGKILL after the agent's grace).
func (c *Client) CancelStep(ctx context.Context, stageID, stepID string) (*agentapi.StepStatus, error) {
	var st agentapi.StepStatus
	return &st, c.call(ctx, http.MethodPost, "/v1/steps/"+url.PathEscape(stepID)+"/cancel", stageID, nil, &st)
}

// defaultPoll is the long-poll of WaitStep and RunStep: under API Gateway's
// 29 s integration timeout.
const defaultPoll = 25 * time.Second

// WaitStep long-polls until the step ends or ctx is done. It fails with
// ErrAgentRestarted if the agent's boot id stops being bootID (when given).
func (c *Client) WaitStep(ctx context.Context, stageID, stepID, bootID string, poll time.Duration) (*agentapi.StepStatus, error) {
	if poll <= 0 {
		poll = defaultPoll
	}
	for {
		st, err := c.StepStatus(ctx, stageID, stepID, poll)
		if err != nil {
			return nil, err
		}
		if bootID != "" && st.BootID != bootID {
			return st, fmt.Errorf("step %s: %w (boot id %s, was %s)", stepID, ErrAgentRestarted, st.BootID, bootID)
		}
		if st.State.Ended() {
			return st, nil
		}
	}
}

// RunStep starts a step and waits for it to end. A step that ends within the
// first long-poll costs one round trip.
func (c *Client) RunStep(ctx context.Context, stageID, stepID string, spec *agentapi.Step) (*agentapi.StepStatus, error) {
	st, err := c.StartStepWait(ctx, stageID, stepID, spec, defaultPoll)
	if err != nil {
		return nil, err
	}
	if st.State.Ended() {
		return st, nil
	}
	return c.WaitStep(ctx, stageID, stepID, st.BootID, 0)
}

// call sends one request, retrying on connection errors only: a request that
// got any HTTP answer is never repeated here.
func (c *Client) call(ctx context.Context, method, path, stageID string, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
	}
	return c.retry(ctx, func() error {
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		resp, err := c.do(ctx, method, path, stageID, rd)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if err := checkStatus(resp); err != nil {
			return err
		}
		if out == nil {
			return nil
		}
		data, err := readBounded(resp.Body, agentapi.MaxAnswerBytes)
		if err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("decode %s %s answer: %w", method, path, err)
		}
		return nil
	})
}

func (c *Client) do(ctx context.Context, method, path, stageID string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if stageID != "" {
		req.Header.Set(agentapi.StageHeader, stageID)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, connError{err}
	}
	return resp, nil
}

// connError marks a failure to get any answer, the only kind retried.
type connError struct{ err error }

func (e connError) Error() string { return e.err.Error() }
func (e connError) Unwrap() error { return e.err }

func (c *Client) retry(ctx context.Context, attempt func() error) error {
	pause := c.backoff
	for i := 0; ; i++ {
		err := attempt()
		var ce connError
		if err == nil || !errors.As(err, &ce) || i >= c.retries || ctx.Err() != nil || isCertificateError(err) {
			return err
		}
		// Full jitter: concurrent callers of a restarting agent spread out.
		sleep := time.Duration(rand.Int64N(int64(pause)) + 1)
		select {
		case <-time.After(sleep):
		case <-ctx.Done():
			return err
		}
		pause *= 2
	}
}

// isCertificateError tells a refused identity, which a retry cannot fix,
// from a connection that failed.
func isCertificateError(err error) bool {
	var unknownAuthority x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	var verify *tls.CertificateVerificationError
	return errors.As(err, &unknownAuthority) || errors.As(err, &hostname) || errors.As(err, &invalid) || errors.As(err, &verify)
}

func checkStatus(resp *http.Response) error {
	if resp.StatusCode < 400 {
		return nil
	}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var eb agentapi.ErrorBody
	if err := json.Unmarshal(data, &eb); err != nil || eb.Error.Code == "" {
		return &APIError{Status: resp.StatusCode, Code: "http_" + strconv.Itoa(resp.StatusCode), Message: string(data)}
	}
	return &APIError{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
}

// readBounded reads body to its end, refusing one of over limit bytes
// without reading further. A broken connection is a connError (retried).
func readBounded(body io.Reader, limit int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(body, limit+1))
	if err != nil {
		return nil, connError{err}
	}
	if int64(len(data)) > limit {
		return nil, &AnswerTooLargeError{Limit: limit}
	}
	return data, nil
}

// AnswerTooLargeError is an agent's answer over what its client reads.
type AnswerTooLargeError struct{ Limit int64 }

func (e *AnswerTooLargeError) Error() string {
	return fmt.Sprintf("the agent's answer is over %d bytes", e.Limit)
}
