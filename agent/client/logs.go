package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/slipway-ci/slipway/agent/agentapi"
)

func logsPath(stepID string, offset, limit int64, follow bool) string {
	q := url.Values{}
	q.Set("offset", fmt.Sprint(offset))
	if limit > 0 {
		q.Set("limit", fmt.Sprint(limit))
	}
	if follow {
		q.Set("follow", "1")
	}
	return "/v1/steps/" + url.PathEscape(stepID) + "/logs?" + q.Encode()
}

// ReadLogs returns up to limit bytes of a step's log from offset (limit 0:
// the agent's default of 1 MiB), and whether they reach the end of the log of
// an ended step.
func (c *Client) ReadLogs(ctx context.Context, stageID, stepID string, offset, limit int64) ([]byte, bool, error) {
	var data []byte
	var done bool
	want := limit
	if want <= 0 {
		want = agentapi.DefaultLogChunk
	}
	err := c.retry(ctx, func() error {
		resp, err := c.do(ctx, http.MethodGet, logsPath(stepID, offset, limit, false), stageID, nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if err := checkStatus(resp); err != nil {
			return err
		}
		if data, err = readBounded(resp.Body, want); err != nil {
			return err
		}
		done = resp.Trailer.Get(agentapi.LogDoneTrailer) == "1"
		return nil
	})
	return data, done, err
}

// maxStalls bounds the reconnections in a row that bring no new byte.
const maxStalls = 8

// StreamLogs copies a step's log from offset to w and follows it until the
// step ends. A connection that breaks mid-stream is resumed from the offset
// reached, so nothing is lost or repeated. It returns the offset reached.
func (c *Client) StreamLogs(ctx context.Context, stageID, stepID string, offset int64, w io.Writer) (int64, error) {
	stalls := 0
	pause := c.backoff
	for {
		start := offset
		done, err := c.streamOnce(ctx, stageID, stepID, &offset, w)
		if err == nil && done {
			return offset, nil
		}
		var apiErr *APIError
		var werr writeError
		if errors.As(err, &apiErr) || errors.As(err, &werr) || ctx.Err() != nil {
			return offset, err
		}
		if offset > start {
			stalls, pause = 0, c.backoff
		} else if stalls++; stalls > maxStalls {
			return offset, fmt.Errorf("follow log of step %s: no progress after %d reconnections: %w", stepID, maxStalls, err)
		}
		select {
		case <-time.After(pause):
		case <-ctx.Done():
			return offset, ctx.Err()
		}
		pause = min(pause*2, 5*time.Second)
	}
}

// writeError is a failure of the caller's writer: not worth a reconnection.
type writeError struct{ error }

func (e writeError) Unwrap() error { return e.error }

func (c *Client) streamOnce(ctx context.Context, stageID, stepID string, offset *int64, w io.Writer) (bool, error) {
	resp, err := c.do(ctx, http.MethodGet, logsPath(stepID, *offset, 0, true), stageID, nil)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	if err := checkStatus(resp); err != nil {
		return false, err
	}
	buf := make([]byte, 256<<10)
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return false, writeError{werr}
			}
			*offset += int64(n)
		}
		if rerr == io.EOF {
			return resp.Trailer.Get(agentapi.LogDoneTrailer) == "1", nil
		}
		if rerr != nil {
			return false, connError{rerr}
		}
	}
}
