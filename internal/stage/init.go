package stage

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/agent/client"
	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/internal/metrics"
	"github.com/slipway-ci/slipway/internal/stage/record"
)

// Input is what the state machine hands each Task: the stage id, and after a
// Catch the error that sent it to Cleanup. Payloads carry ids only.
type Input struct {
	StageID string `json:"stage_id"`
	// Status is the previous task's: RunGroup called again after its own
	// running only rechecks the group it left (Settings.Recheck).
	Status string     `json:"status,omitempty"`
	Error  *TaskError `json:"error,omitempty"`
}

// TaskError is what a Catch records (ResultPath $.error).
type TaskError struct {
	Error string `json:"Error"`
	Cause string `json:"Cause"`
}

// Output is what Init and RunGroup return; the state machine's Choices read
// Status, its Wait states DelaySeconds.
type Output struct {
	StageID string `json:"stage_id"`
	// Status: Init: leased, wait or done; RunGroup: running or done;
	// Cleanup: released.
	Status       string `json:"status"`
	DelaySeconds int    `json:"delay_seconds"`
}

// Statuses of Output.
const (
	StatusLeased   = "leased"
	StatusWait     = "wait"
	StatusRunning  = "running"
	StatusDone     = "done"
	StatusReleased = "released"
)

// Init leases a VM for a stage and binds its agent to the stage. When the
// pool has no idle VM it launches one for the stage if the pool's max
// allows, and returns wait: the state machine waits and calls it again,
// until the acquire timeout.
type Init struct {
	base
	Stages initStages
	Keeper initKeeper
	Opener opener
	Agents *Agents
}

// NewInit is the init function's handler: it leases and binds (the stage's
// records and its pool's VMs), launches and ends VMs, and opens the stage's
// secrets to hand them to the agent.
func NewInit(d *Deps) *Init {
	return &Init{base: d.base(), Stages: d.Stages, Keeper: d.Keeper, Opener: d.Opener, Agents: d.Agents}
}

// initStages is what Init does to a stage's records: lease it a VM, give up
// one whose agent never answered, record a launch, the bind, or an end.
type initStages interface {
	GetStage(ctx context.Context, id string) (*record.Stage, error)
	LeaseForStage(ctx context.Context, st *record.Stage, leaseDeadline time.Time) (vm *lease.VM, fresh bool, err error)
	DropStageVM(ctx context.Context, stageID, launchID string) (*lease.VM, error)
	SetLaunched(ctx context.Context, id, launchID string) error
	MarkBound(ctx context.Context, id string, vm *lease.VM, bootID string) (*record.Stage, error)
	EndStage(ctx context.Context, id, result, reason string) (*record.Stage, error)
}

// initKeeper launches a VM for a stage whose pool has no idle one, probes it
// while it boots, and ends one whose agent never answered; *warm.Keeper
// satisfies it.
type initKeeper interface {
	// Launch records and launches one VM of the pool and returns its launch
	// id; lease.ErrPoolFull when the pool is at its max.
	Launch(ctx context.Context, pool string) (string, error)
	// ProbeBooting asks a booting VM's agent for its health and moves it to
	// idle when it answers.
	ProbeBooting(ctx context.Context, pool, launchID string) (idle bool, err error)
	finisher
}

// finisher ends a releasing VM: its instance terminated, its item removed.
type finisher interface {
	FinishRelease(ctx context.Context, vm lease.VM) error
}

// opener opens a stage's sealed secrets (kms:Decrypt); *secret.Opener
// satisfies it.
type opener interface {
	Open(ctx context.Context, stageID string, sealed []byte) (map[string]string, error)
}

// Handle is the init function.
func (h *Init) Handle(ctx context.Context, in Input) (Output, error) {
	out, err := h.handle(ctx, in)
	if err != nil {
		h.log().Error("init", "stage", in.StageID, "err", err)
	}
	return out, boundary(err)
}

func (h *Init) handle(ctx context.Context, in Input) (Output, error) {
	if err := agentapi.ValidateID("stage", in.StageID); err != nil {
		return Output{}, &FaultError{Err: fmt.Errorf("init: %w", err)}
	}
	out := Output{StageID: in.StageID, Status: StatusDone}
	set := h.settings()
	for range set.MaxBadVMs + 1 {
		st, err := h.Stages.GetStage(ctx, in.StageID)
		if err != nil {
			return Output{}, err
		}
		if !st.ReleasedAt.IsZero() || st.Result != "" {
			return out, nil // canceled, or over before it got a VM
		}
		spec, err := decodeStored[storedStage](st.Spec, "stage")
		if err != nil {
			return Output{}, err
		}
		now := h.now()
		if now.After(st.Deadline) {
			return out, h.end(ctx, st.ID, TimedOut, "the stage's deadline passed before it got a VM")
		}
		vm, fresh, err := h.Stages.LeaseForStage(ctx, st, st.Deadline.Add(set.LeaseMargin))
		if errors.Is(err, lease.ErrNoIdle) {
			return h.noIdle(ctx, st, spec, now)
		}
		if err != nil {
			return Output{}, err
		}
		if fresh {
			h.countLease(st, vm)
		}
		bound, err := h.bind(ctx, st, spec, vm)
		if err != nil {
			return Output{}, err
		}
		if bound {
			out.Status = StatusLeased
			return out, nil
		}
		// The VM's agent did not answer: it was given up; lease another.
		if st.Dropped+1 >= set.MaxBadVMs {
			return out, h.end(ctx, st.ID, Errored, fmt.Sprintf("%d VMs of pool %s leased for the stage did not answer", st.Dropped+1, st.Pool))
		}
	}
	return Output{}, errors.New("init: gave up leasing after too many VMs that did not answer")
}

// noIdle handles a pool without an idle VM: launch one for the stage if it
// has none yet and the pool's max allows, probe it while it boots, and wait.
func (h *Init) noIdle(ctx context.Context, st *record.Stage, spec *storedStage, now time.Time) (Output, error) {
	if now.Sub(st.CreatedAt) > spec.AcquireTimeout {
		return Output{StageID: st.ID, Status: StatusDone}, h.end(ctx, st.ID, TimedOut,
			fmt.Sprintf("no VM of pool %s within the acquire timeout (%s)", st.Pool, spec.AcquireTimeout))
	}
	if st.Launched == "" {
		launchID, err := h.Keeper.Launch(ctx, st.Pool)
		switch {
		case errors.Is(err, lease.ErrPoolFull):
			// Wait for a release: it frees capacity, and the next attempt launches.
		case err != nil:
			h.log().Warn("launch on demand", "stage", st.ID, "pool", st.Pool, "err", err)
		default:
			if err := h.Stages.SetLaunched(ctx, st.ID, launchID); err != nil && !errors.Is(err, lease.ErrExists) {
				return Output{}, err
			}
		}
	} else {
		// The VM launched for the stage boots; another stage may lease it
		// first, and then a release or refill brings the next.
		if _, err := h.Keeper.ProbeBooting(ctx, st.Pool, st.Launched); err != nil {
			h.log().Warn("probe the vm launched for the stage", "stage", st.ID, "launch_id", st.Launched, "err", err)
		}
	}
	return Output{StageID: st.ID, Status: StatusWait, DelaySeconds: waitSeconds(h.settings().AcquirePoll)}, nil
}

// bind binds the agent of the leased VM to the stage; false means the agent
// did not answer and the VM was given up.
func (h *Init) bind(ctx context.Context, st *record.Stage, spec *storedStage, vm *lease.VM) (bool, error) {
	if st.VM == vm.LaunchID && !st.BoundAt.IsZero() {
		return true, nil // a retried init
	}
	secrets, err := h.Opener.Open(ctx, st.ID, st.Sealed)
	if err != nil {
		return false, err
	}
	c, err := h.Agents.Client(vm)
	if err != nil {
		return false, err
	}
	health, err := c.BindStage(ctx, agentStage(st.ID, spec, secrets))
	clear(secrets)
	var refused *client.APIError
	if errors.As(err, &refused) {
		// The agent answered and said no: cleanup ends this VM with the stage.
		return false, &FaultError{Err: fmt.Errorf("bind the agent of vm %s: %w", vm.LaunchID, err)}
	}
	if err != nil {
		h.log().Warn("the leased vm's agent does not answer: giving it up", "stage", st.ID, "launch_id", vm.LaunchID, "err", err)
		dropped, derr := h.Stages.DropStageVM(ctx, st.ID, vm.LaunchID)
		if derr != nil {
			return false, derr
		}
		h.Agents.Forget(vm.LaunchID)
		return false, h.Keeper.FinishRelease(ctx, *dropped)
	}
	_, err = h.Stages.MarkBound(ctx, st.ID, vm, health.BootID)
	return err == nil, err
}

// countLease emits a lease's metrics, once, by whoever leased the VM: how
// long the stage waited for it, and whether it was warm.
func (d *base) countLease(st *record.Stage, vm *lease.VM) {
	warm := vm.LaunchID != st.Launched
	d.emit(st.Pool,
		metrics.Metric{Name: metrics.LeaseWaitMs, Unit: metrics.Milliseconds, Value: float64(d.now().Sub(st.CreatedAt).Milliseconds())},
		metrics.Metric{Name: metrics.WarmHit, Unit: metrics.Count, Value: b2f(warm)},
		metrics.Metric{Name: metrics.ColdStart, Unit: metrics.Count, Value: b2f(!warm)},
	)
}

// agentStage is what binds a VM's agent to a stage; a bind repeated with
// the same (a concurrent or retried one) is the same bind.
func agentStage(id string, spec *storedStage, secrets map[string]string) *agentapi.Stage {
	return &agentapi.Stage{ID: id, Env: spec.Env, Secrets: secrets, Files: spec.Files}
}

func (h *Init) end(ctx context.Context, id, result, reason string) error {
	_, err := h.Stages.EndStage(ctx, id, result, reason)
	if errors.Is(err, record.ErrStageEnded) || errors.Is(err, lease.ErrReleased) {
		return nil
	}
	return err
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// waitSeconds is a Wait state's whole seconds, at least 1.
func waitSeconds(d time.Duration) int {
	return max(1, int((d+time.Second-1)/time.Second))
}
