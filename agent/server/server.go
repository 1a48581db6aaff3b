// Package server is the agent's HTTP API: it binds the agent to one stage at a
// time, runs that stage's steps through the executors, and serves their
// status, logs and outputs. TLS and the client identity are checked before any
// handler runs (see CertFiles).
package server

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/netutil"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/agent/executor"
	"github.com/slipway-ci/slipway/agent/mask"
)

// Config is what the server needs; zero values take the defaults noted.
type Config struct {
	// WorkRoot holds one folder per bound stage.
	WorkRoot string
	// MaxLogBytes caps each step's log (default 512 MiB).
	MaxLogBytes int64
	// StopGrace is the time between SIGTERM and SIGKILL (default 10 s).
	StopGrace time.Duration
	// Version is reported by health.
	Version string
	// Host runs host steps; Docker runs container steps (nil: refused).
	Host   executor.Executor
	Docker executor.Executor
	// BaseEnv is the environment host steps start from (the agent's own).
	BaseEnv []string
	Logger  *slog.Logger
	// BodyTimeout bounds reading a request's body (default 30 s): a client
	// that sends half a body does not hold the connection.
	BodyTimeout time.Duration
}

// Server is the agent's state: the bound stage and what it ran.
type Server struct {
	cfg     Config
	bootID  string
	started time.Time

	mu    sync.Mutex
	stage *stage // nil while unbound
	// ended keeps the usage of recently destroyed stages, so a repeated
	// DELETE (a retried cleanup) gets the same answer.
	ended     map[string]agentapi.Usage
	endedList []string
}

const (
	defaultMaxLogBytes = 512 << 20
	defaultStopGrace   = 10 * time.Second
	endedStagesKept    = 16
)

// New returns a server with a fresh boot id.
func New(cfg Config) (*Server, error) {
	if cfg.WorkRoot == "" {
		return nil, errors.New("agent: work dir is required")
	}
	if cfg.MaxLogBytes <= 0 {
		cfg.MaxLogBytes = defaultMaxLogBytes
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = defaultStopGrace
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Host == nil {
		cfg.Host = hostExecutor(cfg.Logger)
	}
	root, err := filepath.Abs(cfg.WorkRoot)
	if err != nil {
		return nil, fmt.Errorf("agent: work dir: %w", err)
	}
	cfg.WorkRoot = root
	if cfg.BodyTimeout <= 0 {
		cfg.BodyTimeout = defaultBodyTimeout
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("agent: work dir: %w", err)
	}
	// A new agent run has no stage: whatever folders the last one left are
	// stale.
	removeStale(root, "", cfg.Logger)
	var id [16]byte
	_, _ = rand.Read(id[:]) // crypto/rand.Read never fails
	return &Server{
		cfg:     cfg,
		bootID:  hex.EncodeToString(id[:]),
		started: time.Now(),
		ended:   map[string]agentapi.Usage{},
	}, nil
}

// hostExecutor runs host steps each in a cgroup of its own where cgroup v2
// can be written, else in a process group only, which a step's setsid and
// cleared environment escape: said once, at start.
func hostExecutor(logger *slog.Logger) *executor.Process {
	cg, err := executor.OpenCgroups(logger)
	if err != nil {
		if runtime.GOOS == "linux" {
			logger.Warn("host steps are held by their process group only: processes that leave it (setsid) outlive cancel", "err", err)
		}
		return &executor.Process{}
	}
	logger.Info("host steps run in cgroups of their own", "peak_memory", cg.Memory())
	return &executor.Process{Cgroups: cg}
}

// BootID is this run's boot id.
func (s *Server) BootID() string { return s.bootID }

// Handler returns the API's routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", s.health)
	mux.HandleFunc("PUT /v1/stage", s.bindStage)
	mux.HandleFunc("DELETE /v1/stage", s.destroyStage)
	mux.HandleFunc("PUT /v1/steps/{id}", s.withStep(s.startStep))
	mux.HandleFunc("GET /v1/steps/{id}", s.withStep(s.stepStatus))
	mux.HandleFunc("GET /v1/steps/{id}/logs", s.withStep(s.stepLogs))
	mux.HandleFunc("POST /v1/steps/{id}/cancel", s.withStep(s.cancelStep))
	return s.recoverPanics(oneStageHeader(apiErrors(mux)))
}

// apiErrors answers what the mux has no route for in the API's error shape
// (the mux's own answers are plain text): 404 for an unknown path, 405 with
// Allow for a known path asked with another method.
func apiErrors(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, pattern := mux.Handler(r)
		if pattern != "" {
			mux.ServeHTTP(w, r) // (it sets the path values; Handler does not)
			return
		}
		probe := &probeWriter{header: http.Header{}}
		h.ServeHTTP(probe, r)
		if probe.status == http.StatusMethodNotAllowed {
			allow := probe.header.Get("Allow")
			w.Header().Set("Allow", allow)
			writeError(w, http.StatusMethodNotAllowed, agentapi.CodeMethodNotAllowed, fmt.Sprintf("%s %s: allowed: %s", r.Method, r.URL.Path, allow))
			return
		}
		writeError(w, http.StatusNotFound, agentapi.CodeNotFound, fmt.Sprintf("no endpoint %s %s", r.Method, r.URL.Path))
	})
}

// probeWriter takes what the mux's own error handlers write.
type probeWriter struct {
	header http.Header
	status int
}

func (p *probeWriter) Header() http.Header         { return p.header }
func (p *probeWriter) Write(b []byte) (int, error) { return len(b), nil }
func (p *probeWriter) WriteHeader(code int)        { p.status = code }

// oneStageHeader refuses a request naming its stage more than once: which
// one the agent would believe is not for the client to guess.
func oneStageHeader(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.Header.Values(agentapi.StageHeader)) > 1 {
			writeError(w, http.StatusBadRequest, agentapi.CodeInvalid, "the "+agentapi.StageHeader+" header is given more than once")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// HTTPServer is the agent's HTTPS server around its handler: a client that
// connects and sends nothing, or half a header, is cut off after
// headerTimeout, and an idle kept-alive connection after idleTimeout; a
// request's headers are at most maxHeaderBytes. No overall read or write
// deadline: long-polls and log follows last minutes.
func HTTPServer(handler http.Handler, tlsConfig *tls.Config, errorLog *log.Logger) *http.Server {
	return &http.Server{
		Handler:           handler,
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: headerTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          errorLog,
	}
}

// Listen listens on addr for at most MaxConnections connections at once:
// the next waits until one closes, so no number of connections (open
// before their TLS handshake, which is what tells a caller from anyone
// else) exhausts the agent's memory or file descriptors.
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return netutil.LimitListener(ln, MaxConnections), nil
}

// MaxConnections bounds the agent's open connections. Its callers share
// one HTTP/2 connection per function instance for a group's calls, so a
// stage uses a handful.
const MaxConnections = 256

const (
	headerTimeout      = 10 * time.Second
	idleTimeout        = 2 * time.Minute
	defaultBodyTimeout = 30 * time.Second
	// maxHeaderBytes bounds a request's headers: the agent's take a few
	// hundred bytes.
	maxHeaderBytes = 64 << 10
)

// removeStale removes the stage folders under root, but keep.
func removeStale(root, keep string, logger *slog.Logger) {
	entries, err := os.ReadDir(root)
	if err != nil {
		logger.Warn("list stale stage folders", "err", err)
		return
	}
	for _, e := range entries {
		if e.Name() == keep {
			continue
		}
		if err := os.RemoveAll(filepath.Join(root, e.Name())); err != nil {
			logger.Warn("remove a stale stage folder", "folder", e.Name(), "err", err)
			continue
		}
		logger.Info("removed a stale stage folder", "folder", e.Name())
	}
}

// Shutdown stops every running step and waits for them, up to the grace
// period and a little more.
func (s *Server) Shutdown() {
	s.mu.Lock()
	st := s.stage
	s.mu.Unlock()
	if st != nil {
		st.stopAll(s.cfg.StopGrace)
		st.waitAll(s.cfg.StopGrace + 5*time.Second)
	}
	if hp, ok := s.cfg.Host.(*executor.Process); ok && hp.Cgroups != nil {
		hp.KillLeftovers()
		hp.Cgroups.Close()
	}
}

func (s *Server) recoverPanics(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if err, ok := v.(error); ok && errors.Is(err, http.ErrAbortHandler) {
					panic(v)
				}
				s.cfg.Logger.Error("handler panic", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(v))
				writeError(w, http.StatusInternalServerError, agentapi.CodeInternal, "internal error")
			}
		}()
		next.ServeHTTP(w, r)
	})
}

func (s *Server) health(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	h := s.healthLocked()
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, h)
}

// healthLocked is the health document; s.mu is held (and then the stage's
// lock is taken: the lock order is server, stage, step).
func (s *Server) healthLocked() agentapi.Health {
	h := agentapi.Health{
		Version:       s.cfg.Version,
		OS:            runtime.GOOS,
		Arch:          runtime.GOARCH,
		BootID:        s.bootID,
		UptimeSeconds: time.Since(s.started).Seconds(),
		Docker:        s.cfg.Docker != nil,
	}
	if st := s.stage; st != nil {
		h.Stage = st.spec.ID
		h.RunningSteps = st.running()
	}
	return h
}

// boundStage returns the bound stage if the request's stage header names it,
// else writes the error.
func (s *Server) boundStage(w http.ResponseWriter, r *http.Request) (*stage, bool) {
	id := r.Header.Get(agentapi.StageHeader)
	if id == "" {
		writeError(w, http.StatusBadRequest, agentapi.CodeMissingStage, "the "+agentapi.StageHeader+" header is required")
		return nil, false
	}
	s.mu.Lock()
	st := s.stage
	s.mu.Unlock()
	switch {
	case st == nil:
		writeError(w, http.StatusConflict, agentapi.CodeNotBound, fmt.Sprintf("the agent is not bound to stage %q", id))
		return nil, false
	case st.spec.ID != id:
		writeError(w, http.StatusConflict, agentapi.CodeStageMismatch, fmt.Sprintf("the agent is bound to another stage than %q", id))
		return nil, false
	}
	return st, true
}

func (s *Server) withStep(h func(http.ResponseWriter, *http.Request, *stage, string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		if err := agentapi.ValidateID("step", id); err != nil {
			writeError(w, http.StatusBadRequest, agentapi.CodeInvalid, err.Error())
			return
		}
		st, ok := s.boundStage(w, r)
		if !ok {
			return
		}
		h(w, r, st, id)
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, errCode, msg string) {
	writeJSON(w, code, agentapi.ErrorBody{Error: agentapi.ErrorDetail{Code: errCode, Message: msg}})
}

// decodeBody decodes a size-limited JSON body with decode, writing the 4xx.
// A refusal's message may quote what was wrong, so it is masked with the
// secrets the request itself carries and those of the stage (known, nil
// before binding).
func decodeBody[T any](w http.ResponseWriter, r *http.Request, known *mask.Matcher, timeout time.Duration, decode func(io.Reader) (*T, error)) (*T, bool) {
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(timeout))
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, agentapi.MaxBodyBytes))
	if err != nil {
		// The deadline stays: the server's discarding what is left of the
		// body must not wait either. An HTTP/1 connection goes; an HTTP/2
		// one carries other calls, and only this stream ends (there,
		// "Connection: close" would shut the whole connection).
		if r.ProtoMajor == 1 {
			w.Header().Set("Connection", "close")
		}
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			writeError(w, http.StatusRequestEntityTooLarge, agentapi.CodeTooLarge, fmt.Sprintf("body over %d bytes", agentapi.MaxBodyBytes))
			return nil, false
		}
		writeError(w, http.StatusBadRequest, agentapi.CodeInvalid, "read body: "+err.Error())
		return nil, false
	}
	_ = rc.SetReadDeadline(time.Time{}) // long-polls and follows may take minutes
	v, err := decode(bytes.NewReader(data))
	if err != nil {
		writeError(w, http.StatusBadRequest, agentapi.CodeInvalid, maskRefusal(err.Error(), data, known))
		return nil, false
	}
	return v, true
}

// maskRefusal masks a refusal of body with the secrets it carries and
// those known.
func maskRefusal(msg string, body []byte, known *mask.Matcher) string {
	msg = mask.Text(msg, agentapi.CarriedSecrets(body)...)
	if known != nil {
		msg = known.MaskString(msg)
	}
	return msg
}

// localName is the name of an id's folder or files on this machine: the id
// itself, except on Windows, whose file names are case-insensitive (steps
// Build and build would share a log) and where an id such as CON or COM1
// names a device. There it carries a short hash of its exact bytes.
func localName(id string) string { return localNameOn(runtime.GOOS, id) }

func localNameOn(goos, id string) string {
	if goos != "windows" {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return id + "-" + hex.EncodeToString(sum[:4])
}

// mergeEnv layers maps of variables over a KEY=VALUE list, later layers
// winning, and returns the result as a list in a stable order. On Windows
// names are case-insensitive: a layer's PATH replaces the machine's Path
// (taking the layer's spelling), as Windows itself would read them.
func mergeEnv(base []string, layers ...map[string]string) []string {
	return mergeEnvFolding(runtime.GOOS == "windows", base, layers...)
}

func mergeEnvFolding(caseInsensitive bool, base []string, layers ...map[string]string) []string {
	type variable struct{ name, value string }
	m := make(map[string]variable, len(base))
	set := func(name, value string) {
		key := name
		if caseInsensitive {
			key = strings.ToUpper(name)
		}
		m[key] = variable{name, value}
	}
	for _, kv := range base {
		for i := 1; i < len(kv); i++ { // from 1: Windows has variables named "=C:"
			if kv[i] == '=' {
				set(kv[:i], kv[i+1:])
				break
			}
		}
	}
	for _, layer := range layers {
		// A layer is a map: of two names that differ only in case, the
		// later in sorted order wins, the same on every run.
		for _, name := range slices.Sorted(maps.Keys(layer)) {
			set(name, layer[name])
		}
	}
	out := make([]string, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, m[k].name+"="+m[k].value)
	}
	return out
}
