// Package harness is a drop-in for the Harness delegate's VM runner
// (drone-runner-aws in delegate mode): the same HTTP API on port 3000, its
// setup, step and destroy mapped onto a Slipway deployment's delegate API.
// What a request asks that Slipway cannot do is refused with the runner's own
// 400 shape, each field by its JSON path, never dropped.
package harnessrunner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/internal/delegate"
	"github.com/slipway-ci/slipway/internal/stage"
)

// maxBody bounds a request: setup carries the stage's files.
const maxBody = 8 << 20

// maxUnknownLogged bounds the undeclared fields remembered (and logged):
// a delegate upgrade brings a few, a body of invented ones no more.
const maxUnknownLogged = 1000

// logDrain bounds the wait, after a step ended, for its log to reach the
// log service.
const logDrain = 30 * time.Second

// Runner answers the VM runner's API in front of a Slipway deployment.
type Runner struct {
	API *delegate.Client
	Log *slog.Logger
	// LogPoll is the pause between log reads that brought nothing.
	LogPoll time.Duration

	mu     sync.Mutex
	stages map[string]*stageOf // by Slipway stage id
	// pools are the deployment's pool names as read at poolsReadAt.
	pools       []string
	poolsReadAt time.Time
	// unknown holds "route field" for each undeclared field logged once,
	// unknownCount how many (at most maxUnknownLogged are kept).
	unknown      sync.Map
	unknownCount atomic.Int64
}

// Handler is the runner's routes.
func (r *Runner) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /pool_owner", r.poolOwner)
	mux.HandleFunc("POST /setup", r.setup)
	mux.HandleFunc("POST /step", r.step)
	mux.HandleFunc("POST /destroy", r.destroy)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "OK") })
	return mux
}

// httpError is an answer other than 200, in the runner's shape.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func badRequest(err error) error { return &httpError{http.StatusBadRequest, err.Error()} }

// writeError answers as drone-runner-aws does: {"error_msg", "code"}.
func writeError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	var he *httpError
	if errors.As(err, &he) {
		status = he.status
	}
	writeJSON(w, status, struct {
		Message string `json:"error_msg"`
		Status  int    `json:"code"`
	}{err.Error(), status})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// fromSlipway maps the delegate API's refusals to the runner's: what Slipway
// finds wrong with a request is the delegate's to fix (400), the rest 500.
func fromSlipway(err error) error {
	var de *delegate.Error
	if errors.As(err, &de) {
		status := http.StatusInternalServerError
		switch {
		case de.Status == http.StatusNotFound:
			status = http.StatusNotFound
		case de.Status/100 == 4:
			status = http.StatusBadRequest
		}
		return &httpError{status, "slipway: " + de.Message}
	}
	return fmt.Errorf("slipway: %w", err)
}

// readBody decodes the body as the runner does. A field no wire type
// declares is ignored, and logged the first time this process sees it.
func (r *Runner) readBody(w http.ResponseWriter, req *http.Request, v any) error {
	data, err := io.ReadAll(http.MaxBytesReader(w, req.Body, maxBody))
	if err != nil {
		return badRequest(fmt.Errorf("read body: %w", err))
	}
	ignored, err := agentapi.DecodeLenient(data, v)
	if err != nil {
		return badRequest(err)
	}
	for _, field := range ignored {
		if r.unknownCount.Load() >= maxUnknownLogged {
			break
		}
		if _, seen := r.unknown.LoadOrStore(req.URL.Path+" "+field, true); !seen {
			r.unknownCount.Add(1)
			r.log().Info("ignoring what the drop-in does not know", "route", req.URL.Path, "field", field)
		}
	}
	return nil
}

func (r *Runner) log() *slog.Logger {
	if r.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Log
}

// poolNamesFor is how long the deployment's pool names are kept: they
// change with a deployment, and reading them costs the API a look at every
// pool's depth.
const poolNamesFor = 30 * time.Second

func (r *Runner) poolNames(ctx context.Context) ([]string, error) {
	r.mu.Lock()
	names, readAt := r.pools, r.poolsReadAt
	r.mu.Unlock()
	if names != nil && time.Since(readAt) < poolNamesFor {
		return names, nil
	}
	pools, err := r.API.Pools(ctx)
	if err != nil {
		return nil, fromSlipway(err)
	}
	names = []string{}
	for _, p := range pools.Pools {
		names = append(names, p.Name)
	}
	r.mu.Lock()
	r.pools, r.poolsReadAt = names, time.Now()
	r.mu.Unlock()
	return names, nil
}

func (r *Runner) poolOwner(w http.ResponseWriter, req *http.Request) {
	pool := req.URL.Query().Get("pool")
	if pool == "" {
		writeError(w, badRequest(errors.New("mandatory URL parameter 'pool' is missing")))
		return
	}
	names, err := r.poolNames(req.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	owner := slices.Contains(names, pool)
	if id := req.URL.Query().Get("stageId"); owner && id != "" {
		st, err := r.API.Status(req.Context(), stageID(id), 0, 0)
		owner = err == nil && st.Pool == pool
	}
	writeJSON(w, http.StatusOK, struct {
		Owner bool `json:"owner"`
	}{owner})
}

func (r *Runner) setup(w http.ResponseWriter, req *http.Request) {
	var in SetupRequest
	if err := r.readBody(w, req, &in); err != nil {
		writeError(w, err)
		return
	}
	resp, err := r.openStage(req.Context(), &in)
	if err != nil {
		r.log().Warn("setup", "stage_runtime_id", in.ID, "pool", in.PoolID, "correlation_id", in.CorrelationID,
			"account", in.Context.AccountID, "pipeline", in.Context.PipelineID, "err", err)
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// openStage creates the stage and answers once its VM is bound.
func (r *Runner) openStage(ctx context.Context, in *SetupRequest) (*SetupResponse, error) {
	pools, err := r.poolNames(ctx)
	if err != nil {
		return nil, err
	}
	spec, st, err := toSpec(in, pools)
	if err != nil {
		return nil, badRequest(err)
	}
	r.log().Info("setup", "stage_runtime_id", in.ID, "stage", spec.ID, "pool", spec.Pool, "correlation_id", in.CorrelationID,
		"account", in.Context.AccountID, "pipeline", in.Context.PipelineID, "execution", in.Context.PipelineExecutionID, "tags", in.Tags)
	// Answered once the VM is bound: what the delegate waits for.
	status, err := r.API.Create(ctx, spec, stage.MaxWait)
	if err != nil {
		return nil, fromSlipway(err)
	}
	r.mu.Lock()
	if r.stages == nil {
		r.stages = map[string]*stageOf{}
	}
	// A stage whose destroy never came (the delegate died) has ended on
	// Slipway's side by now: no stage outlives its timeout and acquire wait.
	for old, kept := range r.stages {
		if time.Since(kept.created) > 2*stage.MaxStageTimeout {
			delete(r.stages, old)
		}
	}
	// A retried setup keeps what the first one left: the steps' secret
	// outputs are sealed to its key, its background logs are followed.
	if _, known := r.stages[spec.ID]; !known {
		st.created = time.Now()
		r.stages[spec.ID] = st
	}
	r.mu.Unlock()
	for status.Timings.BoundAt == nil {
		if status.Phase == stage.PhaseReleasing || status.Phase == stage.PhaseReleased {
			return nil, fmt.Errorf("stage %s ended before its VM was bound: %s %s", spec.ID, status.Result, status.Reason)
		}
		if status, err = r.API.Status(ctx, spec.ID, status.Version, stage.MaxWait); err != nil {
			return nil, fromSlipway(err)
		}
	}
	// The CI manager stops every step of a stage whose setup gave no
	// address; steps are routed by the stage, so it is only shown.
	host, port, err := net.SplitHostPort(status.VMAddress)
	if err != nil {
		return nil, fmt.Errorf("stage %s is bound to vm %s, whose address %q is not host:port", spec.ID, status.VM, status.VMAddress)
	}
	portNumber, _ := strconv.ParseInt(port, 10, 64)
	return &SetupResponse{
		IPAddress:  host,
		InstanceID: status.VM,
		InstanceInfo: InstanceInfo{
			ID: status.VM, Name: status.VM, IPAddress: host, Port: portNumber, PoolName: status.Pool, Provider: "slipway",
		},
	}, nil
}

func (r *Runner) stageOf(id string) (*stageOf, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, ok := r.stages[id]
	if !ok {
		return nil, &httpError{http.StatusNotFound, fmt.Sprintf(
			"stage %s was not set up by this drop-in process (what setup gave, the log service's token among it, lives in its memory only)", id)}
	}
	return st, nil
}

func (r *Runner) step(w http.ResponseWriter, req *http.Request) {
	var in StepRequest
	if err := r.readBody(w, req, &in); err != nil {
		writeError(w, err)
		return
	}
	resp, err := r.runStep(req.Context(), &in)
	if err != nil {
		r.log().Warn("step", "stage_runtime_id", in.StageRuntimeID, "step", in.Step.ID, "err", err)
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// runStep adds the step as a one-step group and answers when it has ended.
func (r *Runner) runStep(ctx context.Context, in *StepRequest) (*PollStepResponse, error) {
	runtimeID := in.StageRuntimeID
	if runtimeID == "" {
		runtimeID = in.Step.StageRuntimeID
	}
	if runtimeID == "" {
		return nil, badRequest(errors.New("stage_runtime_id: required"))
	}
	id := stageID(runtimeID)
	st, err := r.stageOf(id)
	if err != nil {
		return nil, err
	}
	step, err := toStep(&in.Step, st)
	if err != nil {
		return nil, badRequest(err)
	}
	r.log().Info("step", "stage", id, "step", step.ID, "name", in.Step.Name, "correlation_id", in.CorrelationID)
	var follower *logFollower
	svc, err := st.logServiceFor(&in.Step)
	if err != nil {
		return nil, badRequest(fmt.Errorf("start_step_request.%w", err))
	}
	if svc != nil && in.Step.LogKey != "" {
		follower = r.followLog(ctx, svc, in.Step.LogKey, id, step.ID)
	}

	status, err := r.addStep(ctx, id, step)
	if err != nil {
		if follower != nil {
			follower.stop()
		}
		return nil, err
	}
	switch {
	case follower == nil:
	case status.State == stage.StateBackground:
		// Its log goes on to the log service until the step or the stage
		// ends.
		st.addBackground(follower)
	default:
		drained, cancel := context.WithTimeout(ctx, logDrain)
		err := follower.end(ctx, drained, testSummary(status.Tests)...)
		cancel()
		if err != nil {
			r.log().Warn("log service", "stage", id, "step", step.ID, "err", err)
		}
	}
	return toPoll(status, &in.Step, id, st.outputKey), nil
}

// errLogOpen says a step's log was still open when following it stopped.
var errLogOpen = errors.New("the log did not end in time")

// logFollower streams a step's log to the log service.
type logFollower struct {
	live *liveLog
	done chan error
	stop context.CancelFunc
}

// followLog opens the step's stream and follows its log in the background,
// beyond the request that started the step: a background step's log goes
// on after its answer.
func (r *Runner) followLog(ctx context.Context, svc *logService, key, stageID, stepID string) *logFollower {
	f := &logFollower{live: &liveLog{svc: svc, key: key, now: time.Now}, done: make(chan error, 1)}
	if !svc.cfg.SkipOpeningStream {
		if err := svc.open(ctx, key); err != nil {
			r.log().Warn("log service", "stage", stageID, "step", stepID, "err", err)
		}
	}
	followCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	f.stop = stop
	go func() {
		// Followed from before the step is added (the add answers when it
		// ended): until the first bytes, a step not found yet is looked
		// for again.
		seen := false
		for {
			err := r.API.FollowLog(followCtx, stageID, stepID, r.logPoll(), func(data []byte) error {
				seen = seen || len(data) > 0
				return f.live.add(followCtx, data)
			})
			if seen || !delegate.IsCode(err, stage.CodeNotFound) {
				f.done <- err
				return
			}
			select {
			case <-followCtx.Done():
				f.done <- followCtx.Err()
				return
			case <-time.After(stepNotFoundPause):
			}
		}
	}()
	return f
}

// stepNotFoundPause is the pause before a log follower looks again for a
// step being added.
const stepNotFoundPause = 20 * time.Millisecond

// end waits until drained is done for the log to end, stops following it,
// and sends what is left with extra lines, then the whole log
// (lite-engine's order).
func (f *logFollower) end(ctx, drained context.Context, extra ...string) error {
	var err error
	select {
	case err = <-f.done:
	case <-drained.Done():
		f.stop()
		if stopped := <-f.done; !errors.Is(stopped, context.Canceled) {
			err = stopped
		}
		err = errors.Join(errLogOpen, err)
	}
	f.stop()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return errors.Join(err, f.live.finish(ctx, extra...))
}

// addStep adds the step as a one-step group and answers when it has ended
// (a background step: runs): one call to the delegate API when the step
// ends within its long-poll.
func (r *Runner) addStep(ctx context.Context, id string, step stage.Step) (*stage.StepStatus, error) {
	status, err := r.API.AddGroup(ctx, id, &stage.Group{Steps: []stage.Step{step}}, stage.MaxWait)
	switch {
	case delegate.IsCode(err, stage.CodeConflict):
		// The delegate retries a step whose answer it lost: the same id is
		// then the step already running, to be awaited again.
	case err != nil:
		return nil, fromSlipway(err)
	default:
		if s, ok := status.Step(step.ID); ok && s.Settled() {
			return s, nil
		}
	}
	return r.awaitStep(ctx, id, step.ID)
}

func (r *Runner) awaitStep(ctx context.Context, id, step string) (*stage.StepStatus, error) {
	for {
		status, err := r.API.Step(ctx, id, step, stage.MaxWait)
		if err != nil {
			return nil, fromSlipway(err)
		}
		if status.Settled() {
			return status, nil
		}
	}
}

func (r *Runner) logPoll() time.Duration {
	if r.LogPoll <= 0 {
		return 500 * time.Millisecond
	}
	return r.LogPoll
}

// testSummary is what the step's reports say, as log lines: Harness's own
// test tab needs its Test Intelligence service, which the drop-in does not
// feed.
func testSummary(t *agentapi.TestReport) []string {
	if t == nil {
		return nil
	}
	lines := []string{fmt.Sprintf("Slipway: tests %d, failed %d, skipped %d, %.1fs", t.Tests, t.Failed, t.Skipped, float64(t.DurationMs)/1000)}
	for _, f := range t.Failures {
		lines = append(lines, fmt.Sprintf("  FAILED %s.%s: %s", f.Class, f.Name, f.Message))
	}
	for _, n := range t.Notes {
		lines = append(lines, "  note: "+n)
	}
	return lines
}

func (r *Runner) destroy(w http.ResponseWriter, req *http.Request) {
	var in DestroyRequest
	if err := r.readBody(w, req, &in); err != nil {
		writeError(w, err)
		return
	}
	if err := r.closeStage(req.Context(), &in); err != nil {
		r.log().Warn("destroy", "stage_runtime_id", in.ID, "err", err)
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// closeStage deletes the stage and answers once its VM is released.
func (r *Runner) closeStage(ctx context.Context, in *DestroyRequest) error {
	errs := refusals(unsupportedFields(in))
	if in.ID == "" {
		errs = append(errs, errors.New("id: the stage runtime id is required"))
	}
	if err := errors.Join(errs...); err != nil {
		return badRequest(err)
	}
	id := stageID(in.ID)
	if st, err := r.stageOf(id); err == nil {
		// The background steps' last lines, then their streams closed:
		// the stage's end ends them.
		if err := st.endBackground(ctx, 2*r.logPoll()); err != nil {
			r.log().Warn("log service", "stage", id, "err", err)
		}
	}
	if _, err := r.API.Delete(ctx, id); err != nil {
		return fromSlipway(err)
	}
	status, err := r.API.Follow(ctx, id, nil)
	if err != nil {
		return fromSlipway(err)
	}
	r.mu.Lock()
	delete(r.stages, id)
	r.mu.Unlock()
	r.log().Info("destroy", "stage", id, "result", status.Result, "correlation_id", in.CorrelationID)
	return nil
}
