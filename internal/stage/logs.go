package stage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/agent/client"
	"github.com/slipway-ci/slipway/internal/logarchive"
	"github.com/slipway-ci/slipway/internal/stage/record"
)

// logWriter archives step logs (s3:PutObject); logarchive.Archive
// satisfies it.
type logWriter interface {
	Put(ctx context.Context, stageID, stepID string, log io.Reader) error
}

// logReader reads archived step logs (s3:GetObject); logarchive.Archive
// satisfies it.
type logReader interface {
	Read(ctx context.Context, stageID, stepID string, offset, limit int64) (data []byte, size int64, err error)
}

// archiveLog copies an ended step's whole log from its agent into the
// archive, streaming: the agent's file is the archive's bytes.
func archiveLog(ctx context.Context, logs logWriter, c *client.Client, stageID, stepID string) error {
	pr, pw := io.Pipe()
	go func() {
		_, err := c.StreamLogs(ctx, stageID, stepID, 0, pw)
		pw.CloseWithError(err)
	}()
	err := logs.Put(ctx, stageID, stepID, pr)
	pr.CloseWithError(err) // a Put that gave up must not leave the stream blocked
	return err
}

// archivedLog answers a log read from the archive; ok is false when the
// step's log was not archived.
func (a *API) archivedLog(ctx context.Context, stageID, stepID string, offset, limit int64) (LogChunk, bool, error) {
	data, size, err := a.Logs.Read(ctx, stageID, stepID, offset, limit)
	if errors.Is(err, logarchive.ErrNotFound) {
		return LogChunk{}, false, nil
	}
	if errors.Is(err, logarchive.ErrForbidden) {
		// The deployment's grants are wrong: no retry mends that.
		return LogChunk{}, false, err
	}
	if err != nil {
		return LogChunk{}, false, fail(http.StatusServiceUnavailable, CodeUnavailable, "the log archive did not answer: %v", err)
	}
	if data == nil {
		data = []byte{}
	}
	next := offset + int64(len(data))
	return LogChunk{Offset: offset, NextOffset: next, Data: data, Done: next >= size}, true, nil
}

// liveLog answers a log read from the stage's agent; ok is false when the
// agent does not hold the step's log (it never started, or the VM is gone).
func (a *API) liveLog(ctx context.Context, st *record.Stage, stepID string, offset, limit int64) (LogChunk, bool, error) {
	c, err := a.agentOf(ctx, st)
	if err != nil {
		return LogChunk{}, false, err
	}
	data, done, err := c.ReadLogs(ctx, st.ID, stepID, offset, limit)
	var refused *client.APIError
	switch {
	case errors.As(err, &refused) && refused.Code == agentapi.CodeNotFound:
		return LogChunk{}, false, nil
	case err != nil:
		return LogChunk{}, false, fmt.Errorf("the stage's agent did not answer: %w", err)
	}
	return LogChunk{Offset: offset, NextOffset: offset + int64(len(data)), Data: data, Done: done}, true, nil
}
