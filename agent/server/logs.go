package server

import (
	"fmt"
	"net/http"
	"strconv"
	"sync"

	"github.com/slipway-ci/slipway/agent/agentapi"
)

// Log reads.
const (
	logCopyBuffer = 256 << 10
)

var logBuffers = sync.Pool{New: func() any { b := make([]byte, logCopyBuffer); return &b }}

// stepLogs serves the step's log from ?offset= (default 0). Without follow it
// returns what is there, at most ?limit= bytes (default 1 MiB); with follow=1
// it streams until the step ends. The trailer Slipway-Log-Done is "1" when the
// body reached the end of the log of an ended step: without it, a client
// resumes from the offset it got to.
func (s *Server) stepLogs(w http.ResponseWriter, r *http.Request, st *stage, id string) {
	stp, ok := st.lookup(w, id)
	if !ok {
		return
	}
	q := r.URL.Query()
	offset, err := queryInt(q.Get("offset"), 0)
	if err != nil || offset < 0 {
		writeError(w, http.StatusBadRequest, agentapi.CodeInvalid, fmt.Sprintf("offset %q: want a byte offset >= 0", q.Get("offset")))
		return
	}
	limit, err := queryInt(q.Get("limit"), agentapi.DefaultLogChunk)
	if err != nil || limit <= 0 || limit > agentapi.MaxLogChunk {
		writeError(w, http.StatusBadRequest, agentapi.CodeInvalid, fmt.Sprintf("limit %q: want 1 to %d", q.Get("limit"), agentapi.MaxLogChunk))
		return
	}
	follow := q.Get("follow") == "1" || q.Get("follow") == "true"
	size, done := stp.log.Size()
	if done && offset > size {
		writeError(w, http.StatusBadRequest, agentapi.CodeInvalid, fmt.Sprintf("offset %d is past the end of the log (%d bytes)", offset, size))
		return
	}

	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set(agentapi.LogOffsetHeader, strconv.FormatInt(offset, 10))
	h.Set("Trailer", agentapi.LogDoneTrailer)
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)

	bufp := logBuffers.Get().(*[]byte)
	defer logBuffers.Put(bufp)
	flusher, _ := w.(http.Flusher)
	if !follow {
		end := min(size, offset+limit)
		if _, err := stp.log.CopyTo(w, offset, end, *bufp); err != nil {
			return
		}
		if done && end == size {
			h.Set(agentapi.LogDoneTrailer, "1")
		}
		return
	}
	for {
		size, done, err := stp.log.Wait(r.Context(), offset)
		if err != nil {
			return // the client went away
		}
		n, err := stp.log.CopyTo(w, offset, size, *bufp)
		offset += n
		if err != nil {
			return
		}
		if done && offset == size {
			h.Set(agentapi.LogDoneTrailer, "1")
			return
		}
		if flusher != nil {
			flusher.Flush()
		}
	}
}

func queryInt(text string, def int64) (int64, error) {
	if text == "" {
		return def, nil
	}
	return strconv.ParseInt(text, 10, 64)
}
