package stage

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sfn"
	sfntypes "github.com/aws/aws-sdk-go-v2/service/sfn/types"
	"golang.org/x/sync/errgroup"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/agent/client"
	"github.com/slipway-ci/slipway/agent/mask"
	"github.com/slipway-ci/slipway/internal/clock"
	"github.com/slipway-ci/slipway/internal/ddb"
	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/internal/stage/record"
)

// OpenAPI is the delegate API's OpenAPI 3.1 document.
//
//go:embed openapi.yaml
var OpenAPI []byte

// Error codes of the delegate API.
const (
	CodeInvalid        = "invalid"
	CodeTooLarge       = "too_large"
	CodeNotFound       = "not_found"
	CodeForbidden      = "forbidden"
	CodeTooMany        = "too_many_stages"
	CodeMethod         = "method_not_allowed"
	CodeConflict       = "conflict"
	CodeStageClosed    = "stage_closed"
	CodeStageEnded     = "stage_ended"
	CodeStepNotRunning = "step_not_running"
	CodeLogsGone       = "logs_gone"
	CodeUnavailable    = "unavailable"
	CodeInternal       = "internal"
)

// ErrorBody is the body of every 4xx and 5xx answer, in the agent API's
// shape ({"error": {"code", "message"}}): both of Slipway's APIs answer
// errors alike. The message names the field where one was wrong.
type ErrorBody = agentapi.ErrorBody

// ErrorDetail says what was wrong.
type ErrorDetail = agentapi.ErrorDetail

// PoolDepth is a pool as GET /v1/pools shows it.
type PoolDepth struct {
	Name         string `json:"name"`
	Idle         int    `json:"idle"`
	Provisioning int    `json:"provisioning"`
	Leased       int    `json:"leased"`
	Releasing    int    `json:"releasing"`
	Capacity     int    `json:"capacity"`
	Max          int    `json:"max"`
	WarmTarget   int    `json:"warm_target"`
}

// Pools is the answer of GET /v1/pools.
type Pools struct {
	Pools []PoolDepth `json:"pools"`
}

// LogChunk is the answer of GET .../logs: the step's masked log from Offset,
// and where to read on.
type LogChunk struct {
	Offset     int64  `json:"offset"`
	NextOffset int64  `json:"next_offset"`
	Done       bool   `json:"done"`
	Data       []byte `json:"data"`
}

// API is the delegate API: one handler, served by functions/api behind API
// Gateway (which authenticates every call with IAM) and by `slipway local`.
type API struct {
	base
	reach
	Stages          apiStages
	Depths          depthReader
	Sealer          sealer
	Executions      starter
	StateMachineARN string
	Invoker         Invoker
	CleanupFunction string
	Logs            logReader

	once sync.Once
	mux  *http.ServeMux
}

// NewAPI is the api function's handler: it records stages and their groups
// (sealing their secrets), starts their executions, leases and binds a warm
// VM when asked to wait, reaches agents for live status and logs, reads
// archived logs, and invokes the release on a cancel. It opens no secrets
// and ends no VM.
func NewAPI(d *Deps) *API {
	return &API{base: d.base(), reach: d.reach(), Stages: d.Stages, Depths: d.VMs, Sealer: d.Sealer,
		Executions: d.Executions, StateMachineARN: d.StateMachineARN,
		Invoker: d.Invoker, CleanupFunction: d.CleanupFunction, Logs: d.Logs}
}

// apiStages is what the API does to stages' records: create, list and read
// them, add groups, lease and bind a warm VM, record an end.
type apiStages interface {
	CreateStage(ctx context.Context, ns record.NewStage) (*record.Stage, error)
	GetStage(ctx context.Context, id string) (*record.Stage, error)
	ListStages(ctx context.Context, since time.Time, f record.StageFilter, limit int) ([]record.StageRef, error)
	StageRecords(ctx context.Context, id string) (*record.Records, error)
	AddGroup(ctx context.Context, stageID string, read *record.Records, g record.NewGroup) (*record.Group, *record.Records, error)
	EndStage(ctx context.Context, id, result, reason string) (*record.Stage, error)
	LeaseForStage(ctx context.Context, st *record.Stage, leaseDeadline time.Time) (vm *lease.VM, fresh bool, err error)
	MarkBound(ctx context.Context, id string, vm *lease.VM, bootID string) (*record.Stage, error)
	groupReader
}

// depthReader reads a pool's depth (GET /v1/pools).
type depthReader interface {
	Depth(ctx context.Context, pool string) (lease.Depth, error)
}

// sealer seals a stage's secrets (kms:GenerateDataKey); *secret.Sealer
// satisfies it.
type sealer interface {
	Seal(ctx context.Context, stageID string, secrets map[string]string) ([]byte, error)
}

// starter starts a stage's execution (states:StartExecution).
type starter interface {
	StartExecution(ctx context.Context, params *sfn.StartExecutionInput, optFns ...func(*sfn.Options)) (*sfn.StartExecutionOutput, error)
}

// apiError is an answer other than 2xx.
type apiError struct {
	status        int
	code, message string
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func fail(status int, code, format string, a ...any) *apiError {
	return &apiError{status: status, code: code, message: fmt.Sprintf(format, a...)}
}

type route struct {
	pattern string
	handle  func(w http.ResponseWriter, r *http.Request) error
}

func (a *API) routes() []route {
	return []route{
		{"POST /v1/stages", maskRefusals(a.create)},
		{"GET /v1/stages", a.list},
		{"GET /v1/stages/{id}", a.owned([]string{"wait", "version"}, a.get)},
		{"DELETE /v1/stages/{id}", a.owned(nil, a.cancel)},
		// addGroup checks the owner on the records it reads anyway.
		{"POST /v1/stages/{id}/groups", maskRefusals(a.addGroup)},
		{"GET /v1/stages/{id}/steps/{step}", a.owned([]string{"wait"}, a.getStep)},
		{"GET /v1/stages/{id}/steps/{step}/logs", a.owned([]string{"offset", "limit", "wait"}, a.logs)},
		{"POST /v1/stages/{id}/steps/{step}/cancel", a.owned(nil, a.cancelStep)},
		{"GET /v1/pools", a.pools},
		{"GET /v1/openapi.yaml", func(w http.ResponseWriter, _ *http.Request) error {
			w.Header().Set("Content-Type", "application/yaml")
			_, err := w.Write(OpenAPI)
			return err
		}},
	}
}

// ServeHTTP answers one call.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.once.Do(func() {
		a.mux = http.NewServeMux()
		for _, rt := range a.routes() {
			a.mux.HandleFunc(rt.pattern, func(w http.ResponseWriter, r *http.Request) {
				if err := rt.handle(w, r); err != nil {
					a.writeError(w, r, err)
				}
			})
		}
	})
	start := time.Now()
	if deadline, ok := r.Context().Deadline(); !ok || time.Until(deadline) > requestBudget {
		ctx, cancel := context.WithTimeout(r.Context(), requestBudget)
		defer cancel()
		r = r.WithContext(ctx)
	}
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	if _, pattern := a.mux.Handler(r); pattern == "" {
		a.writeError(rec, r, a.unrouted(r))
	} else {
		a.mux.ServeHTTP(rec, r)
	}
	a.log().Info("api", "method", r.Method, "path", r.URL.Path, "status", rec.status, "ms", time.Since(start).Milliseconds())
}

// unrouted tells a path no route has from a method the path does not take.
func (a *API) unrouted(r *http.Request) error {
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodDelete} {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, pattern := a.mux.Handler(probe); pattern != "" {
			return fail(http.StatusMethodNotAllowed, CodeMethod, "%s does not take %s", r.URL.Path, r.Method)
		}
	}
	return fail(http.StatusNotFound, CodeNotFound, "no such path: %s", r.URL.Path)
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

func (a *API) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	if !errors.As(err, &ae) {
		ae = a.translate(r, err)
	}
	message := ae.message
	var masked *maskedError
	if errors.As(err, &masked) {
		message = mask.Text(message, masked.secrets...)
	}
	switch ae.status {
	case http.StatusTooManyRequests:
		w.Header().Set("Retry-After", "30")
	case http.StatusServiceUnavailable:
		w.Header().Set("Retry-After", retryAfterUnavailable)
	}
	writeJSON(w, ae.status, ErrorBody{Error: ErrorDetail{Code: ae.code, Message: message}})
}

// maskRefusals reads the body of a request that carries secrets before
// handle does, and masks what handle answers other than 2xx (and what is
// logged of it) with the secret values the body carries, read leniently
// (agentapi.CarriedSecrets): a refusal quotes the request's names, ids,
// paths and keys, and any of them may also be a secret's value.
func maskRefusals(handle func(http.ResponseWriter, *http.Request) error) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
		if err != nil {
			return err
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		err = handle(w, r)
		if err == nil {
			return nil
		}
		secrets := agentapi.CarriedSecrets(body)
		if len(secrets) == 0 {
			return err
		}
		return &maskedError{err: err, secrets: secrets}
	}
}

// maskedError is err, whose text is masked with secrets.
type maskedError struct {
	err     error
	secrets []string
}

func (e *maskedError) Error() string { return mask.Text(e.err.Error(), e.secrets...) }
func (e *maskedError) Unwrap() error { return e.err }

// translate maps the store's and the services' errors to answers.
func (a *API) translate(r *http.Request, err error) *apiError {
	var tooLarge *http.MaxBytesError
	var oversize *record.RecordTooLargeError
	var ownerLimit *record.OwnerLimitError
	switch {
	case errors.As(err, &tooLarge):
		return fail(http.StatusRequestEntityTooLarge, CodeTooLarge, "the body is over %d bytes", tooLarge.Limit)
	case errors.As(err, &ownerLimit):
		return fail(http.StatusTooManyRequests, CodeTooMany,
			"%v: the deployment's limit of active stages per principal (maxActiveStages); one may start when another is released", ownerLimit)
	case errors.As(err, &oversize):
		return fail(http.StatusRequestEntityTooLarge, CodeTooLarge, "%v: DynamoDB keeps at most 400 KiB in a record and 4 MiB in a write; "+
			"fetch large files in a step, or give fewer steps or secrets at once", oversize)
	case errors.Is(err, record.ErrStageNotFound):
		return notFound(r.PathValue("id"))
	case errors.Is(err, record.ErrStageClosed):
		return fail(http.StatusConflict, CodeStageClosed, "stage %s: its final group was given already", r.PathValue("id"))
	case errors.Is(err, record.ErrStageEnded), errors.Is(err, lease.ErrReleased):
		return fail(http.StatusConflict, CodeStageEnded, "stage %s has ended", r.PathValue("id"))
	case errors.Is(err, record.ErrStepExists):
		return fail(http.StatusConflict, CodeConflict, "%v", err)
	case errors.Is(err, ddb.ErrConflict):
		return fail(http.StatusServiceUnavailable, CodeUnavailable, "try again: %v", err)
	}
	if ae, ok := unavailable(err); ok {
		a.log().Warn("api: a dependency did not answer", "method", r.Method, "path", r.URL.Path, "err", err)
		return ae
	}
	a.log().Error("api", "method", r.Method, "path", r.URL.Path, "err", err)
	return fail(http.StatusInternalServerError, CodeInternal, "internal error (logged)")
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// decode reads a JSON body strictly: bounded, unknown fields refused.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	body := http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	if err := agentapi.DecodeStrict(body, v); err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return err
		}
		return fail(http.StatusBadRequest, CodeInvalid, "%v", err)
	}
	return nil
}

func invalid(err error) error {
	return fail(http.StatusBadRequest, CodeInvalid, "%v", err)
}

// queryParams reads the long-poll and paging parameters a route takes.
type queryParams struct {
	wait          time.Duration
	version       int64
	hasVersion    bool
	offset, limit int64
}

// unknownParams refuses every query parameter not among names.
func unknownParams(values url.Values, names ...string) []error {
	var errs []error
	for name := range values {
		if !slices.Contains(names, name) {
			errs = append(errs, fmt.Errorf("query parameter %q: unknown here", name))
		}
	}
	return errs
}

func parseQuery(r *http.Request, names ...string) (queryParams, error) {
	q := queryParams{limit: MaxLogChunk}
	values := r.URL.Query()
	errs := unknownParams(values, names...)
	if v := values.Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			if n, nerr := strconv.Atoi(v); nerr == nil {
				d, err = time.Duration(n)*time.Second, nil
			}
		}
		if err != nil || d < 0 || d > MaxWait {
			errs = append(errs, fmt.Errorf("wait %q: want a duration from 0s to %s", v, MaxWait))
		}
		q.wait = d
	}
	ints := []struct {
		name     string
		dst      *int64
		min, max int64
	}{{"version", &q.version, 0, 1 << 62}, {"offset", &q.offset, 0, 1 << 62}, {"limit", &q.limit, 1, MaxLogChunk}}
	for _, p := range ints {
		v := values.Get(p.name)
		if v == "" {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < p.min || n > p.max {
			errs = append(errs, fmt.Errorf("%s %q: want a whole number from %d to %d", p.name, v, p.min, p.max))
			continue
		}
		*p.dst = n
		q.hasVersion = q.hasVersion || p.name == "version"
	}
	if err := errors.Join(errs...); err != nil {
		return q, invalid(err)
	}
	return q, nil
}

// create handles POST /v1/stages: records the stage (secrets sealed) and
// starts its execution. The same id and body again is the same stage (200);
// the same id with another body, 409.
//
// With ?wait= it answers once the stage's VM is bound (or the stage ended),
// or when wait has passed: a delegate that needs the VM before its first
// step (the drop-in's setup) asks once instead of creating, then waiting.
func (a *API) create(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	q, err := parseQuery(r, "wait")
	if err != nil {
		return err
	}
	until := time.Now().Add(q.wait)
	principal, err := a.caller(r)
	if err != nil {
		return err
	}
	var spec Spec
	if err := decode(w, r, &spec); err != nil {
		return err
	}
	if err := spec.Validate(a.poolNames()); err != nil {
		return invalid(err)
	}
	if err := spec.withinDeployment(a.settings()); err != nil {
		return invalid(err)
	}
	if p := a.pool(spec.Pool); p != nil && !p.Admits(principal) && !a.operator(principal) {
		return fail(http.StatusForbidden, CodeForbidden, "pool %s does not take stages from %s (its principals)", spec.Pool, principal)
	}
	ns, err := a.newStage(ctx, &spec)
	if err != nil {
		return err
	}
	ns.Owner, ns.OwnerLimit = principal, a.settings().MaxActiveStages
	st, err := a.Stages.CreateStage(ctx, *ns)
	status := http.StatusCreated
	if errors.Is(err, record.ErrStageExists) {
		if st.Owner != principal && st.Owner != "" {
			// Another owner's: nothing of it is told, not even whether the
			// bodies match.
			return fail(http.StatusConflict, CodeConflict, "stage id %s is taken: choose another", spec.ID)
		}
		if st.SpecHash != ns.SpecHash {
			return fail(http.StatusConflict, CodeConflict, "stage %s exists, created with another body", spec.ID)
		}
		status, err = http.StatusOK, nil
	}
	if err != nil {
		return err
	}
	// Started on every create, so a retry after a failed start starts it; Step
	// Functions runs one execution per name, and a retry names the same one.
	// The start runs beside the early bind, which does not need it: a start
	// that fails leaves the stage recorded, perhaps bound, for a retry of the
	// create to start, or for the watchdog to release (its VM given back)
	// when no retry comes.
	input, _ := json.Marshal(Input{StageID: spec.ID})
	startErr := make(chan error, 1)
	go func() {
		_, err := a.Executions.StartExecution(ctx, &sfn.StartExecutionInput{
			StateMachineArn: aws.String(a.StateMachineARN), Name: aws.String(ExecutionName(st)), Input: aws.String(string(input)),
		})
		startErr <- err
	}()
	bound := a.bindNow(ctx, st, &spec)
	var exists *sfntypes.ExecutionAlreadyExists
	if err := <-startErr; err != nil && !errors.As(err, &exists) {
		a.log().Error("start the stage's execution", "stage", spec.ID, "bound", bound, "err", err)
		return fail(http.StatusServiceUnavailable, CodeUnavailable, "the stage is recorded but its execution did not start: repeat the request")
	}
	if bound {
		return a.writeStatus(ctx, w, status, spec.ID)
	}
	if err := a.awaitStage(ctx, spec.ID, until, func(st *record.Stage) bool {
		return !st.BoundAt.IsZero() || st.Result != "" || !st.ReleasedAt.IsZero()
	}); err != nil {
		return err
	}
	return a.writeStatus(ctx, w, status, spec.ID)
}

// ExecutionName names a stage's execution by its id and the millisecond its
// record was created: Step Functions keeps an execution's name for 90 days
// and refuses it to another (ExecutionAlreadyExists), while a stage's
// records expire sooner, so a stage id used again gets an execution of its
// own, and a retried create, which finds the same record, the same one. At
// most 74 characters from [A-Za-z0-9_-] (Step Functions takes 80; logging
// to CloudWatch wants those characters).
func ExecutionName(st *record.Stage) string {
	return fmt.Sprintf("%s_%09s", st.ID, strconv.FormatInt(st.CreatedAt.UnixMilli(), 36))
}

// bindNowWithin bounds bindNow: a VM whose agent does not answer at once is
// left to Init, which gives it up and leases another.
const bindNowWithin = 2 * time.Second

// bindNow leases an idle VM for a stage just recorded, whose execution is
// being started, and binds its agent, as Init would a moment later: on AWS
// the state machine reaches Init tens of milliseconds after the start, and the
// request still holds the stage's secrets, so nothing is decrypted for it.
// Init then finds the stage bound (the lease and the bind are idempotent by
// stage: a concurrent Init leases the same VM and binds it with the same
// spec). Best effort, and only with an idle VM: the rest (a launch on
// demand, an agent that does not answer, the acquire timeout) is Init's.
// It says whether the stage is bound.
func (a *API) bindNow(ctx context.Context, st *record.Stage, spec *Spec) bool {
	if !st.BoundAt.IsZero() || st.Result != "" || !st.ReleasedAt.IsZero() {
		return !st.BoundAt.IsZero()
	}
	ctx, cancel := context.WithTimeout(ctx, bindNowWithin)
	defer cancel()
	vm, fresh, err := a.Stages.LeaseForStage(ctx, st, st.Deadline.Add(a.settings().LeaseMargin))
	if err != nil {
		if !errors.Is(err, lease.ErrNoIdle) {
			a.log().Warn("lease for a stage early", "stage", st.ID, "err", err)
		}
		return false
	}
	if fresh {
		a.countLease(st, vm)
	}
	c, err := a.Agents.Client(vm)
	if err != nil {
		a.log().Warn("bind a stage early", "stage", st.ID, "launch_id", vm.LaunchID, "err", err)
		return false
	}
	stored := storedStage{Env: spec.Env, Files: spec.Files}
	health, err := c.BindStage(ctx, agentStage(st.ID, &stored, spec.Secrets))
	if err != nil {
		a.log().Warn("bind a stage early", "stage", st.ID, "launch_id", vm.LaunchID, "err", err)
		return false
	}
	if _, err := a.Stages.MarkBound(ctx, st.ID, vm, health.BootID); err != nil {
		a.log().Warn("bind a stage early", "stage", st.ID, "launch_id", vm.LaunchID, "err", err)
		return false
	}
	return true
}

// newStage seals the spec's secrets and encodes what the store keeps.
func (a *API) newStage(ctx context.Context, spec *Spec) (*record.NewStage, error) {
	sealed, err := a.Sealer.Seal(ctx, spec.ID, spec.Secrets)
	if err != nil {
		return nil, err
	}
	stored, _ := json.Marshal(storedStage{
		Env: spec.Env, Files: spec.Files, Timeout: spec.Timeout(), IdleTimeout: spec.IdleTimeout(),
		AcquireTimeout: spec.AcquireTimeout(), Closed: spec.Closed(),
	})
	hashed := *spec
	hashed.Secrets = blank(spec.Secrets)
	hashed.Groups = nil
	ns := &record.NewStage{ID: spec.ID, Pool: spec.Pool, Spec: stored, Sealed: sealed, Deadline: a.now().Add(spec.Timeout())}
	hashes := []string{hashOf(hashed)}
	for _, g := range spec.Groups {
		ng, err := a.newGroup(ctx, spec.ID, g)
		if err != nil {
			return nil, err
		}
		ns.Groups = append(ns.Groups, *ng)
		hashes = append(hashes, ng.SpecHash)
	}
	ns.SpecHash = hashOf(hashes)
	return ns, nil
}

func (a *API) newGroup(ctx context.Context, stageID string, g Group) (*record.NewGroup, error) {
	stored, secrets := g.withoutSecrets()
	sealed, err := a.Sealer.Seal(ctx, stageID, secrets)
	clear(secrets)
	if err != nil {
		return nil, err
	}
	data, _ := json.Marshal(stored)
	ng := &record.NewGroup{SpecHash: hashOf(stored), Spec: data, Sealed: sealed, Final: g.Final}
	for _, s := range g.Steps {
		ng.StepIDs = append(ng.StepIDs, s.ID)
	}
	return ng, nil
}

func (a *API) writeStatus(ctx context.Context, w http.ResponseWriter, code int, id string) error {
	r, err := a.Stages.StageRecords(ctx, id)
	if err != nil {
		return err
	}
	s, err := statusOf(r)
	if err != nil {
		return err
	}
	writeJSON(w, code, s)
	return nil
}

// get handles GET /v1/stages/{id}. With ?wait= it answers when the stage's
// version is no longer ?version= (without one: when it is released), or
// when wait has passed.
func (a *API) get(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	q, err := parseQuery(r, "wait", "version")
	if err != nil {
		return err
	}
	id := r.PathValue("id")
	if err := agentapi.ValidateID("stage", id); err != nil {
		return invalid(err)
	}
	if err := a.awaitStage(ctx, id, time.Now().Add(q.wait), func(st *record.Stage) bool {
		return q.hasVersion && st.Version != q.version || !st.ReleasedAt.IsZero()
	}); err != nil {
		return err
	}
	return a.writeStatus(ctx, w, http.StatusOK, id)
}

// awaitStage reads the stage until done says it is what the caller waits
// for, or until passes. The store is read every 5 ms for the first 200 ms
// (a VM is bound, a group starts, within tens of milliseconds), then less
// and less often.
func (a *API) awaitStage(ctx context.Context, id string, until time.Time, done func(*record.Stage) bool) error {
	pause := 5 * time.Millisecond
	quick := time.Now().Add(200 * time.Millisecond)
	for {
		st, err := a.Stages.GetStage(ctx, id)
		if err != nil {
			return err
		}
		if done(st) || !time.Now().Before(until) {
			return nil
		}
		if err := clock.Sleep(ctx, min(pause, time.Until(until))); err != nil {
			return err
		}
		if time.Now().After(quick) {
			pause = min(pause*3/2, 500*time.Millisecond)
		}
	}
}

// addGroup handles POST /v1/stages/{id}/groups. With ?wait= it answers once
// every step of the group has ended (a background step: runs), or when wait
// has passed, the group's steps as the agent tells them: a delegate that
// sends a step and waits for it (the drop-in) makes one call per step.
// What does not depend on another runs side by side: the group's secrets
// are sealed while the stage is read, and the agent is asked whether the
// groups before it ended while the group is recorded.
//
// A group that is the one to run now, as the records read before its add
// say, starts on the agent while its add is written (a transaction: on AWS
// 10 ms and more), not after. The add fails when the stage moved on
// meanwhile (ended, closed, released, a record too large): then the steps
// that started are canceled at once, and the stage's teardown ends what that
// misses, as it ends every step. An add that lands at a later index than the
// read said raced another add of the same stage: the two were sent at the
// same time, so neither was to wait for the other, and the group runs
// beside the one that won.
func (a *API) addGroup(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	q, err := parseQuery(r, "wait")
	if err != nil {
		return err
	}
	until := time.Now().Add(q.wait)
	id := r.PathValue("id")
	if err := agentapi.ValidateID("stage", id); err != nil {
		return invalid(err)
	}
	var g Group
	if err := decode(w, r, &g); err != nil {
		return err
	}
	if err := g.Validate(); err != nil {
		return invalid(err)
	}
	var ng *record.NewGroup
	var read *record.Records
	reads, readsCtx := errgroup.WithContext(ctx)
	reads.Go(func() (err error) { ng, err = a.newGroup(readsCtx, id, g); return err })
	reads.Go(func() (err error) { read, err = a.Stages.StageRecords(readsCtx, id); return err })
	principal, err := a.caller(r)
	if err != nil {
		return err
	}
	if err := reads.Wait(); err != nil {
		return err
	}
	if !a.mayAct(principal, read.Stage) {
		return notFound(id)
	}
	before, err := statusOf(read)
	if err != nil {
		return err
	}
	// The index the group is most likely to get: the next one. When the
	// group is the one to run now, its steps start while it is recorded
	// (see startEarly).
	next := read.Stage.Groups
	ready := make(chan *client.Client, 1)
	early := make(chan map[string]*StepStatus, 1)
	earlyCtx, stopEarly := context.WithCancel(ctx)
	defer stopEarly()
	go func() {
		var c *client.Client
		if !read.Stage.Final && !anyStepOf(before, g.Steps) {
			c = a.readyToStart(earlyCtx, read.Stage, before, next)
		}
		ready <- c
		if c != nil {
			early <- a.startGroup(earlyCtx, c, read.Stage, next, &g, max(0, time.Until(until)))
		}
	}()
	added, rec, err := a.Stages.AddGroup(ctx, id, read, *ng)
	c := <-ready
	if err != nil {
		if c != nil {
			// The starts are answered or abandoned before the cancels go.
			stopEarly()
			<-early
			a.cancelUnrecorded(c, id, g.Steps)
		}
		return err
	}
	s, err := statusOf(rec)
	if err != nil {
		return err
	}
	var started map[string]*StepStatus
	switch {
	case c != nil:
		started = <-early
		for _, st := range started {
			st.Group = added.Index
		}
	default:
		if added.Index != next {
			c = a.readyToStart(ctx, rec.Stage, s, added.Index)
		}
		if c != nil {
			started = a.startGroup(ctx, c, rec.Stage, added.Index, &g, max(0, time.Until(until)))
		}
	}
	if q.wait > 0 {
		steps := s.Groups[added.Index].Steps
		for i := range steps {
			live, ok := started[steps[i].ID]
			if !ok || !live.Settled() {
				if live, err = a.awaitStep(ctx, id, steps[i].ID, until); err != nil {
					return err
				}
			}
			steps[i] = *live
		}
	}
	writeJSON(w, http.StatusCreated, s)
	return nil
}

// cancelUnrecorded cancels steps started for a group whose add failed, on
// a context of their own: the request's ends with its error.
func (a *API) cancelUnrecorded(c *client.Client, stageID string, steps []Step) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, step := range steps {
		if _, err := c.CancelStep(ctx, stageID, step.ID); err != nil {
			a.log().Warn("cancel a step whose group was not recorded", "stage", stageID, "step", step.ID, "err", err)
		}
	}
}

// anyStepOf says whether the stage already has a step with the id of one of
// steps (a delegate's retry): those are not started early.
func anyStepOf(s *Status, steps []Step) bool {
	for _, g := range s.Groups {
		for _, recorded := range g.Steps {
			if slices.ContainsFunc(steps, func(step Step) bool { return step.ID == recorded.ID }) {
				return true
			}
		}
	}
	return false
}

// readyToStart says whether the API starts the group at index on the
// stage's VM itself, rather than leave it to RunGroup, and gives the
// agent's client if so. It does when the group is the one to run now:
// every group before it ended, as the records say, or as the agent says of
// the groups whose end RunGroup has not recorded yet (a delegate that sends
// each step when the last one answered is that fast, and a stage bound by
// the API runs before its state machine reaches RunGroup). The delegate
// waits for the group, and RunGroup, which follows and records it, would
// start it only at its next look at the records.
func (a *API) readyToStart(ctx context.Context, st *record.Stage, s *Status, index int) *client.Client {
	if index < st.Cursor || index > st.Cursor+maxEarlyGroups || st.Result != "" || st.BoundAt.IsZero() || !st.ReleasedAt.IsZero() {
		return nil
	}
	c, err := a.agentOf(ctx, st)
	if err != nil {
		a.log().Warn("start a group early", "stage", st.ID, "group", index, "err", err)
		return nil
	}
	// The groups before it whose end is not recorded yet (RunGroup may not
	// have run at all).
	var unrecorded []StepStatus
	for _, prior := range s.Groups[st.Cursor:min(index, len(s.Groups))] {
		if prior.State == StatePending || prior.State == StateRunning {
			unrecorded = append(unrecorded, prior.Steps...)
		}
	}
	if len(unrecorded) > 0 && !endedOnAgent(ctx, forGroup(c, len(unrecorded)), st, unrecorded) {
		return nil
	}
	return c
}

// startGroup starts a group readyToStart found ready. The request still
// holds the group's secrets, so nothing is decrypted for it. RunGroup's
// own start of the same step spec is then answered with the step already
// running (the agent is idempotent by step id). Best effort: what is not
// started here RunGroup starts. With wait, each start waits up to wait for
// its step's end (a background step's does not wait), so that start and
// end are one call to the agent; it returns the steps it started, as the
// agent tells them.
func (a *API) startGroup(ctx context.Context, c *client.Client, st *record.Stage, index int, g *Group, wait time.Duration) map[string]*StepStatus {
	c = forGroup(c, len(g.Steps))
	var mu sync.Mutex
	started := map[string]*StepStatus{}
	var wg sync.WaitGroup
	for _, step := range g.Steps {
		wg.Go(func() {
			stepWait := wait
			if step.Background {
				stepWait = 0
			}
			live, err := c.StartStepWait(ctx, st.ID, step.ID, &step.Step, stepWait)
			if err != nil {
				a.log().Warn("start a step early", "stage", st.ID, "step", step.ID, "err", err)
				return
			}
			if live.BootID != st.BootID {
				return
			}
			ls := liveStep(StepStatus{ID: step.ID, Group: index, Background: step.Background}, live)
			mu.Lock()
			started[step.ID] = &ls
			mu.Unlock()
		})
	}
	wg.Wait()
	return started
}

// maxEarlyGroups bounds the groups whose end startNow asks the agent
// about before it starts the next one.
const maxEarlyGroups = 8

// endedOnAgent reports whether every one of steps has ended on the agent (a
// background step: runs there), asking about them side by side.
func endedOnAgent(ctx context.Context, c *client.Client, st *record.Stage, steps []StepStatus) bool {
	var ended atomic.Int64
	var wg sync.WaitGroup
	for _, step := range steps {
		wg.Go(func() {
			s, err := c.StepStatus(ctx, st.ID, step.ID, 0)
			if err == nil && (s.State.Ended() || step.Background) && s.BootID == st.BootID {
				ended.Add(1)
			}
		})
	}
	wg.Wait()
	return int(ended.Load()) == len(steps)
}

// stepIn reads the stage and finds the step the path names.
func (a *API) stepIn(ctx context.Context, r *http.Request) (*record.Records, *StepStatus, error) {
	id, stepID, err := stepPath(r)
	if err != nil {
		return nil, nil, err
	}
	return a.stepOf(ctx, id, stepID)
}

// stepPath is the stage and step ids the path names.
func stepPath(r *http.Request) (id, stepID string, err error) {
	id, stepID = r.PathValue("id"), r.PathValue("step")
	if err := errors.Join(agentapi.ValidateID("stage", id), agentapi.ValidateID("step", stepID)); err != nil {
		return "", "", invalid(err)
	}
	return id, stepID, nil
}

// stepOf reads the stage and finds one of its steps.
func (a *API) stepOf(ctx context.Context, id, stepID string) (*record.Records, *StepStatus, error) {
	rec, err := a.Stages.StageRecords(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	s, err := statusOf(rec)
	if err != nil {
		return nil, nil, err
	}
	step, ok := s.Step(stepID)
	if !ok {
		return nil, nil, fail(http.StatusNotFound, CodeNotFound, "stage %s has no step %q", id, stepID)
	}
	return rec, step, nil
}

// getStep handles GET /v1/stages/{id}/steps/{step}: the recorded result, or
// the agent's word while it runs. With ?wait= it answers when the step ends
// or wait has passed.
func (a *API) getStep(w http.ResponseWriter, r *http.Request) error {
	q, err := parseQuery(r, "wait")
	if err != nil {
		return err
	}
	id, stepID, err := stepPath(r)
	if err != nil {
		return err
	}
	step, err := a.awaitStep(r.Context(), id, stepID, time.Now().Add(q.wait))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, step)
	return nil
}

// awaitStep is a step's status, the recorded one or the agent's word while
// it runs, once it has ended (a background step: runs) or until has passed.
func (a *API) awaitStep(ctx context.Context, id, stepID string, until time.Time) (*StepStatus, error) {
	// A pending step starts as soon as RunGroup sees its group: the records
	// are read quickly at first (a delegate that adds a group and waits for
	// its step is waiting on this), then every 250 ms.
	pause := 25 * time.Millisecond
	for {
		rec, step, err := a.stepOf(ctx, id, stepID)
		if err != nil {
			return nil, err
		}
		remaining := time.Until(until)
		// A pending step may be running already: the group it is in
		// started early (startNow) while RunGroup records the one before.
		if step.State == StateRunning || step.State == StatePending && !rec.Stage.BoundAt.IsZero() {
			// A background step does not end with its group: it is
			// answered as soon as it runs, as RunGroup records it.
			wait := max(0, remaining)
			if step.Background {
				wait = 0
			}
			if c, err := a.agentOf(ctx, rec.Stage); err == nil {
				if live, err := c.StepStatus(ctx, rec.Stage.ID, step.ID, wait); err == nil && live.BootID == rec.Stage.BootID {
					s := liveStep(*step, live)
					return &s, nil
				}
			}
		}
		if step.Settled() || remaining <= 0 {
			return step, nil
		}
		if err := clock.Sleep(ctx, min(pause, remaining)); err != nil {
			return nil, err
		}
		pause = min(pause*3/2, 250*time.Millisecond)
	}
}

// logs handles GET /v1/stages/{id}/steps/{step}/logs: a chunk of the step's
// masked log, read from its VM's agent while the VM lives.
func (a *API) logs(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	q, err := parseQuery(r, "offset", "limit", "wait")
	if err != nil {
		return err
	}
	until := time.Now().Add(q.wait)
	pause := 100 * time.Millisecond
	var rec *record.Records
	var step *StepStatus
	var readAt time.Time
	for {
		// The records say where the log is; while waiting they are read
		// again every 2 s (a pending step starts), the agent more often.
		if time.Since(readAt) >= 2*time.Second {
			if rec, step, err = a.stepIn(ctx, r); err != nil {
				return err
			}
			readAt = time.Now()
		}
		chunk, err := a.logChunk(ctx, rec, step, q)
		if err != nil {
			return err
		}
		if len(chunk.Data) > 0 || chunk.Done || !time.Now().Before(until) {
			writeJSON(w, http.StatusOK, chunk)
			return nil
		}
		if err := clock.Sleep(ctx, min(pause, time.Until(until))); err != nil {
			return err
		}
		pause = min(pause*3/2, 500*time.Millisecond)
	}
}

// logChunk reads one chunk of a step's log, live or archived.
func (a *API) logChunk(ctx context.Context, rec *record.Records, step *StepStatus, q queryParams) (LogChunk, error) {
	empty := LogChunk{Offset: q.offset, NextOffset: q.offset, Data: []byte{}}
	switch step.State {
	case StatePending:
		// A pending step of a bound stage may run already (startNow).
		if rec.Stage.BoundAt.IsZero() {
			return empty, nil
		}
	case StateSkipped:
		empty.Done = true
		return empty, nil
	}
	// Live from the agent while the VM lives; from the archive once the
	// step's log is there and the agent is gone. The bytes are the same.
	var liveErr error
	if rec.Stage.ReleasedAt.IsZero() {
		chunk, ok, err := a.liveLog(ctx, rec.Stage, step.ID, q.offset, q.limit)
		if ok {
			return chunk, nil
		}
		liveErr = err
	}
	chunk, ok, err := a.archivedLog(ctx, rec.Stage.ID, step.ID, q.offset, q.limit)
	switch {
	case err != nil:
		return LogChunk{}, err
	case ok:
		return chunk, nil
	case liveErr != nil:
		return LogChunk{}, fail(http.StatusServiceUnavailable, CodeUnavailable, "%v", liveErr)
	case rec.Stage.ReleasedAt.IsZero():
		// Not on the agent yet (RunGroup is about to start it), or never
		// to be: done only once the step has an end.
		empty.Done = step.State != StateRunning && step.State != StatePending && step.State != StateBackground
		return empty, nil
	default:
		return LogChunk{}, fail(http.StatusGone, CodeLogsGone, "the log of step %s was not archived, and stage %s's VM is gone", step.ID, rec.Stage.ID)
	}
}

// cancelStep handles POST /v1/stages/{id}/steps/{step}/cancel.
func (a *API) cancelStep(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	if _, err := parseQuery(r); err != nil {
		return err
	}
	rec, step, err := a.stepIn(ctx, r)
	if err != nil {
		return err
	}
	if step.State != StateRunning {
		return fail(http.StatusConflict, CodeStepNotRunning, "step %s is %s", step.ID, step.State)
	}
	c, err := a.agentOf(ctx, rec.Stage)
	if err != nil {
		return fail(http.StatusServiceUnavailable, CodeUnavailable, "the stage's VM cannot be reached: %v", err)
	}
	live, err := c.CancelStep(ctx, rec.Stage.ID, step.ID)
	if err != nil {
		return fail(http.StatusServiceUnavailable, CodeUnavailable, "the stage's agent did not cancel the step: %v", err)
	}
	writeJSON(w, http.StatusAccepted, fromAgent(step.ID, step.Group, live))
	return nil
}

// cancel handles DELETE /v1/stages/{id}: the stage's result becomes
// canceled, its running steps are canceled on the agent, and its release
// runs at once (asynchronously), whatever its execution is waiting for.
func (a *API) cancel(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	if _, err := parseQuery(r); err != nil {
		return err
	}
	id := r.PathValue("id")
	if err := agentapi.ValidateID("stage", id); err != nil {
		return invalid(err)
	}
	st, err := a.Stages.EndStage(ctx, id, Canceled, "canceled by the delegate")
	if errors.Is(err, lease.ErrReleased) {
		return a.writeStatus(ctx, w, http.StatusOK, id)
	}
	if err != nil && !errors.Is(err, record.ErrStageEnded) {
		return err
	}
	a.cancelRunning(ctx, st)
	if err := invokeAsync(ctx, a.Invoker, a.CleanupFunction, CleanupInput{StageID: id, Reason: "canceled by the delegate"}); err != nil {
		// The stage's execution releases it when it next looks.
		a.log().Warn("invoke the release", "stage", id, "err", err)
	}
	return a.writeStatus(ctx, w, http.StatusAccepted, id)
}

// cancelRunning cancels the steps of the stage's current group on its agent,
// bounded and best effort: the release tears the stage down anyway.
func (a *API) cancelRunning(ctx context.Context, st *record.Stage) {
	if st.Cursor >= st.Groups {
		return
	}
	c, err := a.agentOf(ctx, st)
	if err != nil {
		return
	}
	_, spec, err := currentGroup(ctx, a.Stages, st)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for _, step := range spec.Steps {
		wg.Go(func() { _, _ = c.CancelStep(ctx, st.ID, step.ID) })
	}
	wg.Wait()
}

// pools handles GET /v1/pools.
func (a *API) pools(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	if _, err := parseQuery(r); err != nil {
		return err
	}
	out := Pools{Pools: []PoolDepth{}}
	now := a.now()
	for _, p := range a.Pools {
		d, err := a.Depths.Depth(ctx, p.Name)
		if err != nil {
			return err
		}
		out.Pools = append(out.Pools, PoolDepth{
			Name: p.Name, Idle: d.ByState[lease.Idle], Provisioning: d.ByState[lease.Launching] + d.ByState[lease.Provisioning],
			Leased: d.ByState[lease.Leased], Releasing: d.ByState[lease.Releasing], Capacity: d.Capacity,
			Max: p.MaxInstances, WarmTarget: p.WarmTarget(now),
		})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}
