package stage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/internal/metrics"
	"github.com/slipway-ci/slipway/internal/stage/record"
	"github.com/slipway-ci/slipway/internal/warm"
)

// CleanupInput is what the release is invoked with, from three places: the
// state machine (its state: the stage id, and after a Catch the error), the
// execution-status rule on an execution that was stopped, timed out or
// failed (EventBridge's "Step Functions Execution Status Change" event,
// whose detail carries the execution's input, which names the stage), and
// the API's DELETE
// (the stage id and a reason).
type CleanupInput struct {
	StageID string           `json:"stage_id"`
	Error   *TaskError       `json:"error,omitempty"`
	Reason  string           `json:"reason,omitempty"`
	Detail  *ExecutionChange `json:"detail,omitempty"`
	// Stuck says why the Watchdog found the stage not progressing.
	Stuck string `json:"stuck,omitempty"`
}

// ExecutionChange is the detail of EventBridge's execution status event.
type ExecutionChange struct {
	ExecutionARN string `json:"executionArn"`
	Name         string `json:"name"`
	Status       string `json:"status"`
	Error        string `json:"error"`
	Cause        string `json:"cause"`
	// Input is the execution's input (JSON), which names the stage: the
	// name also says when the stage was created (ExecutionName).
	Input string `json:"input"`
}

// stageID is the stage whose execution changed: the input's stage_id.
func (c *ExecutionChange) stageID() string {
	var in Input
	if err := json.Unmarshal([]byte(c.Input), &in); err == nil && in.StageID != "" {
		return in.StageID
	}
	// An execution started before its name said when (its name is the id).
	return c.Name
}

// Cleanup releases a stage's VM, always and exactly once: it tears the stage
// down on the agent (bounded, best effort), releases the lease (the one
// conditional transaction that decides who terminates), terminates the
// instance and removes its item, deletes the stage's secrets and triggers a
// refill of the pool. Invoked again for a released stage, it finishes what a
// crashed invocation left.
type Cleanup struct {
	base
	reach
	Stages         cleanupStages
	Keeper         finisher
	Logs           logWriter
	Invoker        Invoker
	RefillFunction string
}

// NewCleanup is the cleanup function's handler: it records a stage's end,
// stops its group (archiving step logs), releases it, ends its VM and asks
// for a refill.
func NewCleanup(d *Deps) *Cleanup {
	return &Cleanup{base: d.base(), reach: d.reach(), Stages: d.Stages, Keeper: d.Keeper, Logs: d.Logs,
		Invoker: d.Invoker, RefillFunction: d.RefillFunction}
}

// cleanupStages is what Cleanup does to a stage's records: read them, end
// the stage and its group, release it and delete its groups' secrets.
type cleanupStages interface {
	GetStage(ctx context.Context, id string) (*record.Stage, error)
	StageRecords(ctx context.Context, id string) (*record.Records, error)
	EndStage(ctx context.Context, id, result, reason string) (*record.Stage, error)
	ReleaseStage(ctx context.Context, stageID, result, reason string) (*lease.VM, error)
	DeleteSecrets(ctx context.Context, stageID string, groups []record.Group) error
	groupBooks
}

// Handle is the cleanup function.
func (h *Cleanup) Handle(ctx context.Context, in CleanupInput) (Output, error) {
	out, err := h.handle(ctx, in)
	if err != nil {
		h.log().Error("cleanup", "stage", out.StageID, "err", err)
	}
	return out, boundary(err)
}

func (h *Cleanup) handle(ctx context.Context, in CleanupInput) (Output, error) {
	id := in.StageID
	if id == "" && in.Detail != nil {
		id = in.Detail.stageID()
	}
	out := Output{StageID: id, Status: StatusReleased}
	if err := agentapi.ValidateID("stage", id); err != nil {
		return out, &FaultError{Err: fmt.Errorf("cleanup: %w", err)}
	}
	result, reason, implied := in.outcome()
	st, err := h.Stages.GetStage(ctx, id)
	if errors.Is(err, record.ErrStageNotFound) {
		h.log().Warn("cleanup of a stage with no record", "stage", id)
		return out, nil
	}
	if err != nil {
		return out, err
	}
	var vm *lease.VM
	releasedNow := false
	if st.ReleasedAt.IsZero() {
		if implied && st.Result == "" {
			// The result first: tearing the stage down on the agent ends its
			// steps, and a RunGroup still following them must not record
			// that as the steps failing.
			ended, err := h.Stages.EndStage(ctx, id, result, reason)
			if err != nil && !errors.Is(err, record.ErrStageEnded) && !errors.Is(err, lease.ErrReleased) {
				return out, err
			}
			if ended != nil {
				st = ended
			}
		}
		h.destroy(ctx, st)
		vm, err = h.Stages.ReleaseStage(ctx, id, result, reason)
		releasedNow = err == nil
		if err != nil && !errors.Is(err, lease.ErrReleased) {
			h.emit(st.Pool, metrics.Metric{Name: metrics.ReleaseFailures, Unit: metrics.Count, Value: 1})
			return out, err
		}
	}
	if vm == nil && st.VM != "" {
		// Released before: finish what that release may have left.
		vm, err = h.VMs.Get(ctx, st.Pool, st.VM)
		if errors.Is(err, lease.ErrNotFound) {
			vm, err = nil, nil
		}
		if err != nil {
			return out, err
		}
	}
	if vm != nil && vm.State == lease.Releasing && vm.Stage == id {
		if err := h.Keeper.FinishRelease(ctx, *vm); err != nil {
			h.emit(st.Pool, metrics.Metric{Name: metrics.ReleaseFailures, Unit: metrics.Count, Value: 1})
			return out, fmt.Errorf("end vm %s of stage %s: %w", vm.LaunchID, id, err)
		}
		h.Agents.Forget(vm.LaunchID)
	}
	r, err := h.Stages.StageRecords(ctx, id)
	if err != nil {
		return out, err
	}
	if err := h.Stages.DeleteSecrets(ctx, id, r.Groups); err != nil {
		return out, err
	}
	if releasedNow {
		h.refill(ctx, st.Pool)
		h.emitBy(st.Pool, metrics.DimResult, r.Stage.Result, metrics.Metric{
			Name: metrics.StageSeconds, Unit: metrics.Seconds, Value: r.Stage.ReleasedAt.Sub(r.Stage.CreatedAt).Seconds(),
		})
		h.log().Info("released", "stage", id, "pool", st.Pool, "result", r.Stage.Result, "reason", r.Stage.Reason, "vm", st.VM)
	}
	return out, nil
}

// outcome is the result the input implies, for a stage that has none yet;
// implied is false for the state machine's own, normal path, where the
// stage's result was set by the task that ended it.
func (in CleanupInput) outcome() (result, reason string, implied bool) {
	switch {
	case in.Error != nil:
		return Errored, fmt.Sprintf("a task failed: %s: %s", in.Error.Error, agentapi.Truncate(in.Error.Cause, 1000)), true
	case in.Detail != nil && in.Detail.Status == "ABORTED":
		return Canceled, "the stage's execution was stopped", true
	case in.Detail != nil && in.Detail.Status == "TIMED_OUT":
		return TimedOut, "the stage's execution timed out", true
	case in.Detail != nil:
		return Errored, fmt.Sprintf("the stage's execution ended %s: %s", in.Detail.Status, agentapi.Truncate(in.Detail.Error+" "+in.Detail.Cause, 1000)), true
	case in.Stuck != "":
		return Errored, "the stage was not progressing: " + in.Stuck, true
	case in.Reason != "":
		return Canceled, in.Reason, true
	default:
		return Errored, "the stage was released before its result was known", false
	}
}

// releaseStopTimeout bounds stopping the steps a release cuts short
// (their logs archived), within the cleanup function's minute.
const releaseStopTimeout = 20 * time.Second

// destroy stops the stage's current group (its steps canceled, their logs
// archived, their ends recorded) and tears the stage down on its VM's
// agent, bounded: the instance is terminated next whatever happens.
func (h *Cleanup) destroy(ctx context.Context, st *record.Stage) {
	c, err := h.agentOf(ctx, st)
	if err != nil {
		return
	}
	stopCtx, cancelStop := context.WithTimeout(ctx, releaseStopTimeout)
	h.stopGroup(stopCtx, h.Stages, &h.reach, h.Logs, st)
	cancelStop()
	ctx, cancel := context.WithTimeout(ctx, h.settings().DestroyTimeout)
	defer cancel()
	usage, err := c.DestroyStage(ctx, st.ID)
	if err != nil {
		h.log().Warn("destroy the stage on its agent", "stage", st.ID, "launch_id", st.VM, "err", err)
		return
	}
	h.log().Info("stage destroyed on its agent", "stage", st.ID, "cpu_seconds", usage.CPUSeconds,
		"peak_memory_bytes", usage.PeakMemoryByte, "disk_bytes", usage.DiskBytes, "steps", usage.Steps)
	if usage.Leftover != "" {
		// The instance is terminated next, its disk with it; said all the
		// same, as a VM kept longer would hold it.
		h.log().Warn("the agent could not remove the stage's folder", "stage", st.ID, "launch_id", st.VM, "leftover", usage.Leftover)
	}
}

// refill asks the refill function to refill the pool now, asynchronously: a
// release freed capacity that a waiting stage or the warm target wants.
func (h *Cleanup) refill(ctx context.Context, pool string) {
	if h.Invoker == nil || h.RefillFunction == "" {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := invokeAsync(ctx, h.Invoker, h.RefillFunction, warm.Request{Pool: pool}); err != nil {
		h.log().Warn("trigger a refill", "pool", pool, "err", err)
	}
}
