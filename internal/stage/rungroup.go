package stage

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/agent/client"
	"github.com/slipway-ci/slipway/internal/clock"
	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/internal/metrics"
	"github.com/slipway-ci/slipway/internal/stage/record"
)

// RunGroup runs a stage's groups on its VM, one after another, each group's
// steps at once. Within one invocation it goes on from group to group, and
// waits for the delegate's next group of an open stage, until its time
// budget ends; then it returns running, with a delay that grows with the
// time the current group has run, and the state machine calls it again after
// a Wait. It returns done when the stage is over: its final group ended, a
// step failed in a stage given all its groups, the deadline or the idle
// timeout passed, or it was canceled.
type RunGroup struct {
	base
	reach
	Stages runStages
	Opener opener
	Logs   logWriter
}

// NewRunGroup is the rungroup function's handler: it reads and records a
// stage's groups, reaches its agent, opens its secrets (each step's are
// handed to the agent with the step) and archives step logs.
func NewRunGroup(d *Deps) *RunGroup {
	return &RunGroup{base: d.base(), reach: d.reach(), Stages: d.Stages, Opener: d.Opener, Logs: d.Logs}
}

// runStages is what RunGroup does to a stage's records: read them, record
// each group's end and the stage's.
type runStages interface {
	GetStage(ctx context.Context, id string) (*record.Stage, error)
	StageRecords(ctx context.Context, id string) (*record.Records, error)
	EndStage(ctx context.Context, id, result, reason string) (*record.Stage, error)
	groupBooks
}

// groupBooks reads a stage's group and records its end.
type groupBooks interface {
	groupReader
	FinishGroup(ctx context.Context, st *record.Stage, index int, end record.GroupEnd) (*record.Stage, error)
}

// groupReader reads a stage's group.
type groupReader interface {
	GetGroup(ctx context.Context, stageID string, index int) (*record.Group, error)
}

// Handle is the step function.
func (h *RunGroup) Handle(ctx context.Context, in Input) (Output, error) {
	out, err := h.handle(ctx, in)
	if err != nil {
		h.log().Error("run group", "stage", in.StageID, "err", err)
	}
	return out, boundary(err)
}

// budgetMargin is kept between the end of the long-polls and the Lambda's
// deadline, to record what ended.
const budgetMargin = 15 * time.Second

func (h *RunGroup) handle(ctx context.Context, in Input) (Output, error) {
	if err := agentapi.ValidateID("stage", in.StageID); err != nil {
		return Output{}, &FaultError{Err: fmt.Errorf("run group: %w", err)}
	}
	set := h.settings()
	// The Lambda's own end, less a margin to record what ended.
	latest := h.now().Add(24 * time.Hour)
	if dl, ok := ctx.Deadline(); ok {
		latest = dl.Add(-min(budgetMargin, time.Until(dl)/4))
	}
	// window is how long this invocation waits on: a recheck of the group
	// the last one left running is short; a group started here, or the
	// wait for the delegate's next one, is long.
	recheck := in.Status == StatusRunning
	window := func() time.Time {
		w := set.Poll
		if recheck {
			w = set.Recheck
		}
		return minTime(h.now().Add(w), latest)
	}
	done := Output{StageID: in.StageID, Status: StatusDone}
	for {
		st, err := h.Stages.GetStage(ctx, in.StageID)
		if err != nil {
			return Output{}, err
		}
		spec, err := decodeStored[storedStage](st.Spec, "stage")
		if err != nil {
			return Output{}, err
		}
		switch {
		case !st.ReleasedAt.IsZero():
			return done, nil
		case st.BoundAt.IsZero():
			return done, h.end(ctx, st.ID, Errored, "run group: the stage has no bound VM")
		case st.Result != "":
			stopCtx, cancel := context.WithTimeout(ctx, budgetMargin)
			h.stopGroup(stopCtx, h.Stages, &h.reach, h.Logs, st)
			cancel()
			return done, nil
		}
		now := h.now()
		if now.After(st.Deadline) {
			if err := h.end(ctx, st.ID, TimedOut, fmt.Sprintf("the stage ran past its timeout (%s)", spec.Timeout)); err != nil {
				return Output{}, err
			}
			continue
		}
		if st.Cursor < st.Groups {
			ended, delay, err := h.runGroup(ctx, st, spec, minTime(window(), st.Deadline), latest)
			if err != nil {
				return Output{}, err
			}
			recheck = false
			if !ended {
				if h.now().Before(st.Deadline) {
					return Output{StageID: st.ID, Status: StatusRunning, DelaySeconds: delay}, nil
				}
			}
			continue
		}
		// Every group given has run: wait for the delegate's next one.
		if st.Final {
			// A final group ends the stage when it ends; reaching here means
			// that end was recorded without a result.
			return done, h.end(ctx, st.ID, Succeeded, "")
		}
		idleSince := st.GroupEndedAt
		if idleSince.IsZero() {
			idleSince = st.BoundAt
		}
		idleEnd := idleSince.Add(spec.IdleTimeout)
		if !now.Before(idleEnd) {
			if err := h.end(ctx, st.ID, TimedOut, fmt.Sprintf("no group came within the idle timeout (%s)", spec.IdleTimeout)); err != nil {
				return Output{}, err
			}
			continue
		}
		budget := window()
		more, err := h.awaitGroup(ctx, st, minTime(budget, minTime(idleEnd, st.Deadline)))
		if err != nil {
			return Output{}, err
		}
		recheck = false
		if !more && !h.now().Before(budget) {
			return Output{StageID: st.ID, Status: StatusRunning, DelaySeconds: h.delay(h.now().Sub(idleSince), st.Deadline)}, nil
		}
	}
}

// runGroup runs the stage's current group until its steps end or until.
// ended says the group's end was recorded (or someone else's was).
func (h *RunGroup) runGroup(ctx context.Context, st *record.Stage, spec *storedStage, until, latest time.Time) (ended bool, delay int, err error) {
	g, gspec, err := currentGroup(ctx, h.Stages, st)
	if err != nil {
		return false, 0, err
	}
	c, err := h.agentOf(ctx, st)
	if err != nil {
		return false, 0, err
	}
	c = forGroup(c, len(gspec.Steps))
	opened, err := h.Opener.Open(ctx, st.ID, g.Sealed)
	if err != nil {
		return false, 0, err
	}
	defer clear(opened)
	picked := h.now()
	statuses := make([]StepStatus, len(gspec.Steps))
	allEnded := true
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, step := range gspec.Steps {
		agentSpec := step.Step
		agentSpec.Secrets = stepSecrets(opened, step.ID)
		wg.Go(func() {
			status, ended := h.follow(ctx, c, st, g.Index, step, &agentSpec, until, latest)
			mu.Lock()
			defer mu.Unlock()
			statuses[i] = status
			allEnded = allEnded && ended
		})
	}
	wg.Wait()
	started, endedAt, longest := span(statuses, picked)
	if !allEnded {
		return false, h.delay(h.now().Sub(started), st.Deadline), nil
	}
	end := record.GroupEnd{State: Succeeded, StartedAt: started, EndedAt: endedAt}
	var firstFailed *StepStatus
	for i := range statuses {
		end.Steps = append(end.Steps, statuses[i].record(resultLimit(len(statuses))))
		if unsuccessful(statuses[i].State) && firstFailed == nil {
			firstFailed = &statuses[i]
		}
	}
	if firstFailed != nil {
		end.State = Failed
	}
	switch {
	case firstFailed != nil && (spec.Closed || g.Final):
		end.Result, end.Reason = resultOf(firstFailed), describeFailure(firstFailed)
	case g.Final:
		end.Result = Succeeded
		if earlier, err := h.earlierFailure(ctx, st.ID); err != nil {
			return false, 0, err
		} else if earlier != nil {
			end.Result, end.Reason = resultOf(earlier), describeFailure(earlier)
		}
	}
	if _, err := h.Stages.FinishGroup(ctx, st, g.Index, end); err != nil && !errors.Is(err, record.ErrGroupMoved) {
		return false, 0, err
	}
	if !started.Before(picked) {
		// The whole group ran in this invocation: what it cost beyond its
		// longest step is the orchestration's overhead.
		overhead := h.now().Sub(picked) - longest
		h.emit(st.Pool, metrics.Metric{Name: metrics.StepOverheadMs, Unit: metrics.Milliseconds, Value: float64(max(0, overhead).Milliseconds())})
	}
	return true, 0, nil
}

// currentGroup reads the stage's current group and its steps.
func currentGroup(ctx context.Context, stages groupReader, st *record.Stage) (*record.Group, *Group, error) {
	g, err := stages.GetGroup(ctx, st.ID, st.Cursor)
	if err != nil {
		return nil, nil, err
	}
	gspec, err := decodeStored[Group](g.Spec, "group")
	if err != nil {
		return nil, nil, err
	}
	return g, gspec, nil
}

// follow starts a step on the agent (idempotent by step id: a step started
// by an earlier invocation is not started again) and long-polls it until it
// ends or until; a background step, only until the agent has it running. A step whose agent does not answer for the agent grace, or
// restarted, or refused it, ends with state error. An agent that stops
// answering keeps follow on past until, to the grace's end if latest allows:
// a short recheck must not leave the question open forever.
func (h *RunGroup) follow(ctx context.Context, c *client.Client, st *record.Stage, group int, step Step, spec *agentapi.Step, until, latest time.Time) (StepStatus, bool) {
	id := step.ID
	ctx, cancel := context.WithDeadline(ctx, latest)
	defer cancel()
	running := StepStatus{ID: id, Group: group, State: StateRunning}
	var status *agentapi.StepStatus
	var unreachableSince time.Time
	var lastErr error
	grace := h.settings().AgentGrace
	for {
		end := until
		if !unreachableSince.IsZero() {
			if h.now().Sub(unreachableSince) >= grace {
				return h.failed(id, group, fmt.Sprintf("the agent did not answer for %s: %v", grace, lastErr)), true
			}
			end = minTime(maxTime(until, unreachableSince.Add(grace)), latest)
		}
		wait := min(time.Until(end), MaxWait)
		if wait <= 0 {
			return running, false
		}
		if step.Background {
			wait = 0 // what the start says: running, or a step that could not start
		}
		// The agent is unreachable from the first failing call's start: the
		// client's own retries count towards the grace.
		callStart := h.now()
		var err error
		if status == nil {
			status, err = c.StartStepWait(ctx, st.ID, id, spec, wait)
		} else {
			status, err = c.StepStatus(ctx, st.ID, id, wait)
		}
		if ctx.Err() != nil {
			return running, false
		}
		var refused *client.APIError
		switch {
		case errors.As(err, &refused):
			return h.failed(id, group, fmt.Sprintf("the agent refused the step: %s", refused.Message)), true
		case err != nil:
			status, lastErr = nil, err
			if unreachableSince.IsZero() {
				unreachableSince = callStart
			}
			// Not past the grace's end: the loop's top decides there.
			if clock.Sleep(ctx, min(time.Second, time.Until(unreachableSince.Add(grace)))) != nil {
				return running, false
			}
			continue
		}
		unreachableSince = time.Time{}
		if status.BootID != st.BootID {
			return h.failed(id, group, fmt.Sprintf("the agent restarted (boot id %s, was %s): the step was lost", status.BootID, st.BootID)), true
		}
		running = fromAgent(id, group, status)
		if step.Background && !status.State.Ended() {
			running.State = StateBackground
			return running, true
		}
		if status.State.Ended() {
			if err := archiveLog(ctx, h.Logs, c, st.ID, id); err != nil {
				running.LogError = agentapi.Truncate(err.Error(), 500)
				h.log().Warn("archive a step's log", "stage", st.ID, "step", id, "err", err)
			}
			return running, true
		}
	}
}

func (h *RunGroup) failed(id string, group int, why string) StepStatus {
	now := h.now()
	return StepStatus{ID: id, Group: group, State: string(agentapi.StepError), Error: why, EndedAt: &now}
}

// forGroup is the client for a group of steps: parallel steps share one
// connection, a single step keeps HTTP/1.1's faster round trip.
func forGroup(c *client.Client, steps int) *client.Client {
	if steps > 1 {
		return c.Multiplexed()
	}
	return c
}

// stopGroup ends the current group of a stage that has its result (canceled,
// timed out), from RunGroup, or from the release before it tears the stage
// down: its steps are canceled on the agent, their logs archived and what
// they ended with recorded. Best effort: the release destroys the stage on
// the agent anyway.
func (d *base) stopGroup(ctx context.Context, stages groupBooks, r *reach, logs logWriter, st *record.Stage) {
	if st.Cursor >= st.Groups {
		return
	}
	g, gspec, err := currentGroup(ctx, stages, st)
	if err != nil {
		d.log().Warn("stop group", "stage", st.ID, "err", err)
		return
	}
	c, err := r.agentOf(ctx, st)
	if err != nil {
		d.log().Warn("stop group", "stage", st.ID, "err", err)
		return
	}
	c = forGroup(c, len(gspec.Steps))
	statuses := make([]StepStatus, len(gspec.Steps))
	var unknown atomic.Int32
	var wg sync.WaitGroup
	for i, step := range gspec.Steps {
		wg.Go(func() {
			statuses[i] = StepStatus{ID: step.ID, Group: g.Index, State: Canceled, Error: "the stage ended: " + st.Result}
			_, err := c.CancelStep(ctx, st.ID, step.ID)
			var refused *client.APIError
			if errors.As(err, &refused) && refused.Status == http.StatusNotFound {
				unknown.Add(1)
			}
			if err != nil {
				return // never started, or the agent is gone
			}
			s, err := c.WaitStep(ctx, st.ID, step.ID, st.BootID, 0)
			if err != nil {
				return
			}
			statuses[i] = fromAgent(step.ID, g.Index, s)
			if err := archiveLog(ctx, logs, c, st.ID, step.ID); err != nil {
				statuses[i].LogError = agentapi.Truncate(err.Error(), 500)
				d.log().Warn("archive the log of a stopped step", "stage", st.ID, "step", step.ID, "err", err)
			}
		})
	}
	wg.Wait()
	if int(unknown.Load()) == len(statuses) {
		// No step of the group ever reached the agent: the group was not
		// run, and its status says skipped.
		return
	}
	started, ended, _ := span(statuses, d.now())
	end := record.GroupEnd{State: Canceled, StartedAt: started, EndedAt: ended}
	for _, s := range statuses {
		end.Steps = append(end.Steps, s.record(resultLimit(len(statuses))))
	}
	if _, err := stages.FinishGroup(ctx, st, g.Index, end); err != nil && !errors.Is(err, record.ErrGroupMoved) {
		d.log().Warn("stop group: record", "stage", st.ID, "err", err)
	}
}

// awaitGroup waits until the delegate adds a group, the stage ends, or
// until; it polls the stage's record, quickly at first.
func (h *RunGroup) awaitGroup(ctx context.Context, st *record.Stage, until time.Time) (bool, error) {
	pause := 20 * time.Millisecond
	for h.now().Before(until) {
		if err := clock.Sleep(ctx, min(pause, time.Until(until))); err != nil {
			return false, err
		}
		pause = min(pause*3/2, time.Second)
		cur, err := h.Stages.GetStage(ctx, st.ID)
		if err != nil {
			return false, err
		}
		if cur.Groups > st.Cursor || cur.Result != "" || !cur.ReleasedAt.IsZero() {
			return true, nil
		}
	}
	return false, nil
}

// earlierFailure is the first step that did not succeed of the stage's ended
// groups, nil when all did.
func (h *RunGroup) earlierFailure(ctx context.Context, id string) (*StepStatus, error) {
	r, err := h.Stages.StageRecords(ctx, id)
	if err != nil {
		return nil, err
	}
	s, err := statusOf(r)
	if err != nil {
		return nil, err
	}
	for _, g := range s.Groups {
		for i := range g.Steps {
			if unsuccessful(g.Steps[i].State) {
				return &g.Steps[i], nil
			}
		}
	}
	return nil, nil
}

// resultOf is the stage's result for a step that did not succeed: a step
// that could not be run at all (its agent did not answer or restarted, the
// VM has no container engine: state error) is ours, "error", not the
// build's "failed".
func resultOf(s *StepStatus) string {
	if s.State == string(agentapi.StepError) {
		return Errored
	}
	return Failed
}

// delay is the wait before the next RunGroup while a group has run for
// elapsed: a share of elapsed, at most MaxDelay, never past the deadline; 0
// below a second.
func (h *RunGroup) delay(elapsed time.Duration, deadline time.Time) int {
	set := h.settings()
	d := min(time.Duration(float64(elapsed)*set.DelayShare), set.MaxDelay, time.Until(deadline))
	return max(0, int(d/time.Second))
}

func (h *RunGroup) end(ctx context.Context, id, result, reason string) error {
	_, err := h.Stages.EndStage(ctx, id, result, reason)
	if errors.Is(err, record.ErrStageEnded) || errors.Is(err, lease.ErrReleased) {
		return nil
	}
	return err
}

// span is when the earliest step started, the latest ended, and the longest
// step's run; steps without times count from fallback.
func span(statuses []StepStatus, fallback time.Time) (started, ended time.Time, longest time.Duration) {
	started = fallback
	for _, s := range statuses {
		if s.StartedAt != nil && s.StartedAt.Before(started) {
			started = *s.StartedAt
		}
		if s.EndedAt != nil && s.EndedAt.After(ended) {
			ended = *s.EndedAt
		}
		if s.StartedAt != nil && s.EndedAt != nil {
			longest = max(longest, s.EndedAt.Sub(*s.StartedAt))
		}
	}
	if ended.IsZero() {
		ended = time.Now()
	}
	return started, ended, longest
}

// describeFailure is the stage's reason for a step that did not succeed.
func describeFailure(s *StepStatus) string {
	why := fmt.Sprintf("step %s %s", s.ID, s.State)
	switch {
	case s.OOMKilled:
		why += " (out of memory)"
	case s.ExitCode != nil && s.State == Failed:
		why += fmt.Sprintf(" (exit code %d)", *s.ExitCode)
	}
	if s.Error != "" {
		why += ": " + agentapi.Truncate(s.Error, 300)
	}
	return why
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
