package delegate_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/internal/delegate"
	"github.com/slipway-ci/slipway/internal/stage"
)

// The client against the real API runs in cmd/slipway's and
// internal/local's tests; these pin what a server's odd answers do.

func TestRequestsAndErrors(t *testing.T) {
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = append(seen, r.Method+" "+r.URL.RequestURI())
		switch {
		case strings.HasPrefix(r.URL.Path, "/v1/pools"):
			w.WriteHeader(http.StatusBadGateway)
			_, _ = w.Write([]byte("<html>bad gateway</html>"))
		case r.Method == http.MethodPost && r.URL.Path == "/v1/stages":
			w.WriteHeader(http.StatusConflict)
			_ = json.NewEncoder(w).Encode(stage.ErrorBody{Error: stage.ErrorDetail{Code: stage.CodeConflict, Message: "stage s1 exists with another body"}})
		case strings.HasSuffix(r.URL.Path, "/logs"):
			_, _ = w.Write([]byte(`{"offset":5,"next_offset":9,"data":"aGkK"}`))
		default:
			_, _ = w.Write([]byte(`{"id":"s1","phase":"released","version":3}`))
		}
	}))
	defer srv.Close()
	c, err := delegate.New(srv.URL+"/", delegate.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	_, err = c.Create(ctx, &stage.Spec{ID: "s1", Pool: "p"}, 0)
	if !delegate.IsCode(err, stage.CodeConflict) || !strings.Contains(err.Error(), "another body") {
		t.Errorf("create: %v", err)
	}
	_, err = c.Pools(ctx)
	if !delegate.IsCode(err, "Bad Gateway") || !strings.Contains(err.Error(), "<html>") {
		t.Errorf("a non-API error answer: %v", err)
	}
	chunk, err := c.Logs(ctx, "s1", "a/b", 5, 0)
	if err != nil || string(chunk.Data) != "hi\n" || chunk.NextOffset != 9 {
		t.Errorf("logs: %+v %v", chunk, err)
	}
	st, err := c.Follow(ctx, "s1", nil)
	if err != nil || st.Phase != stage.PhaseReleased {
		t.Errorf("follow: %+v %v", st, err)
	}
	want := []string{
		"POST /v1/stages",
		"GET /v1/pools",
		"GET /v1/stages/s1/steps/a%2Fb/logs?offset=5",
		"GET /v1/stages/s1",
	}
	if strings.Join(seen, "\n") != strings.Join(want, "\n") {
		t.Errorf("requests:\n%s\nwant:\n%s", strings.Join(seen, "\n"), strings.Join(want, "\n"))
	}
}

func TestFollowWaitsOnVersions(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		q := r.URL.Query()
		switch n {
		case 1:
			if q.Has("wait") {
				t.Errorf("the first read waits: %s", r.URL)
			}
			_, _ = w.Write([]byte(`{"phase":"queued","version":1}`))
		case 2:
			if q.Get("version") != "1" || q.Get("wait") != "25s" {
				t.Errorf("the second read: %s", r.URL)
			}
			_, _ = w.Write([]byte(`{"phase":"running","version":2}`))
		default:
			_, _ = w.Write([]byte(`{"phase":"released","version":5}`))
		}
	}))
	defer srv.Close()
	c, err := delegate.New(srv.URL, delegate.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var phases []string
	if _, err := c.Follow(context.Background(), "s1", func(st *stage.Status) { phases = append(phases, st.Phase) }); err != nil {
		t.Fatal(err)
	}
	if strings.Join(phases, ",") != "queued,running,released" {
		t.Errorf("phases %v", phases)
	}
}

func TestBadEndpoints(t *testing.T) {
	for _, bad := range []string{"", "localhost:8079", "ftp://x", "http://"} {
		if _, err := delegate.New(bad, delegate.Options{}); err == nil {
			t.Errorf("endpoint %q was accepted", bad)
		}
	}
}

func TestHugeAnswerRefused(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`{"id":"` + strings.Repeat("x", 5<<20) + `"}`))
	}))
	defer srv.Close()
	c, _ := delegate.New(srv.URL, delegate.Options{})
	if _, err := c.Status(context.Background(), "s1", -1, 0); err == nil || !strings.Contains(err.Error(), "over") {
		t.Errorf("a 5 MiB answer: %v", err)
	}
}

// A connection that breaks while a log is followed is not the end of it:
// the follower asks again from the offset it had, and no byte is lost or
// read twice; a 503 is asked again too.
func TestFollowLogResumesAfterAReset(t *testing.T) {
	log := "line 1\nline 2\nline 3\n"
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		switch n {
		case 2: // the connection breaks mid-answer
			conn, _, err := w.(http.Hijacker).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			_, _ = conn.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"offs"))
			conn.Close()
			return
		case 3:
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"error":{"code":"unavailable","message":"DynamoDB did not answer (Query): try again"}}`))
			return
		}
		offset := 0
		_, _ = fmt.Sscan(r.URL.Query().Get("offset"), &offset)
		end := min(offset+7, len(log))
		_ = json.NewEncoder(w).Encode(stage.LogChunk{Offset: int64(offset), NextOffset: int64(end), Data: []byte(log[offset:end]), Done: end == len(log)})
	}))
	defer srv.Close()
	c, err := delegate.New(srv.URL, delegate.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var got strings.Builder
	if err := c.FollowLog(context.Background(), "s1", "build", time.Millisecond, func(b []byte) error { got.Write(b); return nil }); err != nil {
		t.Fatalf("follow: %v", err)
	}
	if got.String() != log || calls.Load() < 5 {
		t.Errorf("read %q in %d calls", got.String(), calls.Load())
	}
	// What the API refuses for good is not asked again.
	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"error":{"code":"not_found","message":"no stage \"s1\""}}`))
	}))
	defer refusing.Close()
	c, _ = delegate.New(refusing.URL, delegate.Options{})
	start := time.Now()
	if err := c.FollowLog(context.Background(), "s1", "build", time.Millisecond, func([]byte) error { return nil }); !delegate.IsCode(err, stage.CodeNotFound) || time.Since(start) > time.Second {
		t.Errorf("a 404: %v after %s", err, time.Since(start))
	}
}

// As names the caller to slipway local, on loopback only: elsewhere the
// caller is whoever signs, and a name would be a lie the API ignores.
func TestAsNamesTheCallerOnLoopbackOnly(t *testing.T) {
	var seen atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.Header.Get(delegate.CallerHeader))
		_, _ = w.Write([]byte(`{"stages":[]}`))
	}))
	defer srv.Close()
	c, err := delegate.New(srv.URL, delegate.Options{As: "team-a"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.List(context.Background(), 0, "", 0); err != nil {
		t.Fatal(err)
	}
	if got, _ := seen.Load().(string); got != "team-a" {
		t.Errorf("caller header %q", got)
	}
	if _, err := delegate.New("https://abc.execute-api.eu-west-1.amazonaws.com/api", delegate.Options{As: "team-a"}); err == nil || !strings.Contains(err.Error(), "only slipway local") {
		t.Errorf("--as with API Gateway: %v", err)
	}
}
