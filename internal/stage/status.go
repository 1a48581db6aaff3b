package stage

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/internal/stage/record"
)

// Stage results.
const (
	Succeeded = "succeeded"
	Failed    = "failed"
	Canceled  = "canceled"
	TimedOut  = "timed_out"
	// Errored: the stage could not run (an infrastructure fault); Reason says
	// what failed.
	Errored = "error"
)

// Phases of a stage.
const (
	PhaseQueued    = "queued"    // waiting for a VM
	PhaseRunning   = "running"   // its VM is bound: groups run or are awaited
	PhaseReleasing = "releasing" // its result is known; its VM is being released
	PhaseReleased  = "released"
)

// Group and step states beyond the agent's.
const (
	StatePending = "pending"
	StateRunning = "running"
	StateSkipped = "skipped"
	// StateBackground is a background step that started and was left
	// running when its group ended; it runs until it ends by itself or the
	// stage ends, and its record is not updated after.
	StateBackground = "background"
)

// unsuccessful reports whether a step's state fails its group: an ended
// step that did not succeed.
func unsuccessful(state string) bool {
	switch state {
	case Succeeded, StateRunning, StatePending, StateSkipped, StateBackground:
		return false
	}
	return true
}

// Status is a stage as the delegate API shows it.
type Status struct {
	ID     string `json:"id"`
	Pool   string `json:"pool"`
	Phase  string `json:"phase"`
	Result string `json:"result,omitempty"`
	Reason string `json:"reason,omitempty"`
	// Closed says the final group was given.
	Closed bool   `json:"closed"`
	VM     string `json:"vm,omitempty"`
	// VMAddress is where the VM's agent listens (host:port), from binding on.
	VMAddress string        `json:"vm_address,omitempty"`
	CreatedAt time.Time     `json:"created_at"`
	Deadline  time.Time     `json:"deadline"`
	Timings   Timings       `json:"timings"`
	Groups    []GroupStatus `json:"groups"`
	// Version changes with every change of the stage: pass it back as
	// ?version= to wait for the next one.
	Version int64 `json:"version"`
}

// Timings are when the stage reached each phase.
type Timings struct {
	QueuedAt   time.Time  `json:"queued_at"`
	LeasedAt   *time.Time `json:"leased_at,omitempty"`
	BoundAt    *time.Time `json:"bound_at,omitempty"`
	EndedAt    *time.Time `json:"ended_at,omitempty"`
	ReleasedAt *time.Time `json:"released_at,omitempty"`
	// LeaseWaitMs is from queued to leased.
	LeaseWaitMs *int64 `json:"lease_wait_ms,omitempty"`
}

// GroupStatus is one group of a stage.
type GroupStatus struct {
	Index     int          `json:"index"`
	Final     bool         `json:"final"`
	State     string       `json:"state"`
	StartedAt *time.Time   `json:"started_at,omitempty"`
	EndedAt   *time.Time   `json:"ended_at,omitempty"`
	Steps     []StepStatus `json:"steps"`
}

// StepStatus is one step of a stage.
type StepStatus struct {
	ID    string `json:"id"`
	Group int    `json:"group"`
	// Background says the step runs beside the groups after its own.
	Background bool              `json:"background,omitempty"`
	State      string            `json:"state"`
	ExitCode   *int              `json:"exit_code,omitempty"`
	OOMKilled  bool              `json:"oom_killed,omitempty"`
	Outputs    map[string]string `json:"outputs,omitempty"`
	Error      string            `json:"error,omitempty"`
	StartedAt  *time.Time        `json:"started_at,omitempty"`
	EndedAt    *time.Time        `json:"ended_at,omitempty"`
	LogBytes   int64             `json:"log_bytes"`
	// LogError says why the step's log could not be archived: it is then
	// readable only while the VM lives.
	LogError string `json:"log_error,omitempty"`
	// Tests is what the step's test reports say.
	Tests *agentapi.TestReport `json:"tests,omitempty"`
}

// stepResult is a step's result as its record keeps it.
type stepResult struct {
	ExitCode  *int                 `json:"exit_code,omitempty"`
	OOMKilled bool                 `json:"oom_killed,omitempty"`
	Outputs   map[string]string    `json:"outputs,omitempty"`
	Error     string               `json:"error,omitempty"`
	StartedAt time.Time            `json:"started_at"`
	EndedAt   time.Time            `json:"ended_at"`
	LogBytes  int64                `json:"log_bytes"`
	LogError  string               `json:"log_error,omitempty"`
	Tests     *agentapi.TestReport `json:"tests,omitempty"`
}

// A step's result is one item of its group's end, a transaction: each is
// kept far below DynamoDB's 400 KB item, and a group's together below its
// 4 MB transaction (50 steps of 128 KiB would be 6.4 MB).
const (
	maxResultBytes    = 128 << 10
	groupResultsBytes = 3 << 20
)

// resultLimit is the most one of a group's steps records.
func resultLimit(steps int) int {
	return min(maxResultBytes, groupResultsBytes/max(steps, 1))
}

// fromAgent is the step's status as the agent tells it.
// liveStep is a step as its agent tells it while the records still say it
// is pending or running.
func liveStep(recorded StepStatus, live *agentapi.StepStatus) StepStatus {
	s := fromAgent(recorded.ID, recorded.Group, live)
	s.Background = recorded.Background
	if recorded.Background && !live.State.Ended() {
		s.State = StateBackground
	}
	return s
}

// Settled says whether the step is as a delegate that waits for it wants
// it: ended, or (a background step) running beside the groups.
func (s *StepStatus) Settled() bool { return s.State != StatePending && s.State != StateRunning }

func fromAgent(id string, group int, st *agentapi.StepStatus) StepStatus {
	s := StepStatus{
		ID: id, Group: group, State: string(st.State), ExitCode: st.ExitCode, OOMKilled: st.OOMKilled,
		Outputs: st.Outputs, Error: st.Error, StartedAt: timePtr(st.StartedAt), LogBytes: st.LogBytes, Tests: st.Tests,
	}
	if st.EndedAt != nil {
		s.EndedAt = timePtr(*st.EndedAt)
	}
	return s
}

// record encodes a step's end for its record in at most limit bytes:
// failed tests' details, then outputs, that would make it larger are
// dropped, and the record says so.
func (s StepStatus) record(limit int) record.StepRecord {
	r := stepResult{ExitCode: s.ExitCode, OOMKilled: s.OOMKilled, Outputs: s.Outputs, Error: s.Error, LogBytes: s.LogBytes, LogError: s.LogError}
	if s.Tests != nil {
		tests := *s.Tests
		tests.Failures = slices.Clone(tests.Failures)
		r.Tests = &tests
	}
	if s.StartedAt != nil {
		r.StartedAt = *s.StartedAt
	}
	if s.EndedAt != nil {
		r.EndedAt = *s.EndedAt
	}
	data, _ := json.Marshal(r)
	if len(data) > limit && r.Tests != nil {
		// The failures' output first, then the failures: the totals stay.
		for i := range r.Tests.Failures {
			r.Tests.Failures[i].Output = ""
		}
		if data, _ = json.Marshal(r); len(data) > limit {
			r.Tests.Failures = nil
		}
		r.Tests.Notes = append(r.Tests.Notes, fmt.Sprintf("failed tests' details dropped: over %d KiB", limit>>10))
		data, _ = json.Marshal(r)
	}
	if len(data) > limit {
		r.Outputs = nil
		r.Error = agentapi.Truncate(r.Error, 4<<10) + fmt.Sprintf(" (outputs dropped: over %d KiB)", limit>>10)
		data, _ = json.Marshal(r)
	}
	return record.StepRecord{ID: s.ID, State: s.State, Result: data}
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// phase tells where the stage is.
func phase(st *record.Stage) string {
	switch {
	case !st.ReleasedAt.IsZero():
		return PhaseReleased
	case st.Result != "":
		return PhaseReleasing
	case !st.BoundAt.IsZero():
		return PhaseRunning
	default:
		return PhaseQueued
	}
}

// statusOf builds the stage's status from its records.
func statusOf(r *record.Records) (*Status, error) {
	st := r.Stage
	s := &Status{
		ID: st.ID, Pool: st.Pool, Phase: phase(st), Result: st.Result, Reason: st.Reason, Closed: st.Final,
		VM: st.VM, VMAddress: st.VMAddress, CreatedAt: st.CreatedAt, Deadline: st.Deadline, Version: st.Version,
		Timings: Timings{
			QueuedAt: st.CreatedAt, LeasedAt: timePtr(st.LeasedAt), BoundAt: timePtr(st.BoundAt),
			EndedAt: timePtr(st.EndedAt), ReleasedAt: timePtr(st.ReleasedAt),
		},
		Groups: []GroupStatus{},
	}
	if !st.LeasedAt.IsZero() {
		ms := st.LeasedAt.Sub(st.CreatedAt).Milliseconds()
		s.Timings.LeaseWaitMs = &ms
	}
	for _, g := range r.Groups {
		spec, err := decodeStored[Group](g.Spec, "group")
		if err != nil {
			return nil, err
		}
		gs := GroupStatus{Index: g.Index, Final: g.Final, State: g.State, StartedAt: timePtr(g.StartedAt), EndedAt: timePtr(g.EndedAt), Steps: []StepStatus{}}
		current := g.Index == st.Cursor && !st.BoundAt.IsZero() && st.ReleasedAt.IsZero()
		if gs.State == "" {
			switch {
			case current && st.Result == "":
				gs.State = StateRunning
			case st.Result != "" || !st.ReleasedAt.IsZero():
				gs.State = StateSkipped
			default:
				gs.State = StatePending
			}
		}
		for _, step := range spec.Steps {
			ss, err := stepStatus(r, step.ID, g.Index, gs.State)
			if err != nil {
				return nil, err
			}
			ss.Background = step.Background
			gs.Steps = append(gs.Steps, ss)
		}
		s.Groups = append(s.Groups, gs)
	}
	return s, nil
}

// stepStatus is a step's recorded result, or what its group's state implies.
func stepStatus(r *record.Records, id string, group int, groupState string) (StepStatus, error) {
	rec, ok := r.Steps[id]
	if !ok {
		state := groupState
		if state != StateRunning && state != StatePending {
			state = StateSkipped
		}
		return StepStatus{ID: id, Group: group, State: state}, nil
	}
	res, err := decodeStored[stepResult](rec.Result, "step")
	if err != nil {
		return StepStatus{}, err
	}
	return StepStatus{
		ID: id, Group: group, State: rec.State, ExitCode: res.ExitCode, OOMKilled: res.OOMKilled, Outputs: res.Outputs,
		Error: res.Error, StartedAt: timePtr(res.StartedAt), EndedAt: timePtr(res.EndedAt), LogBytes: res.LogBytes, LogError: res.LogError,
		Tests: res.Tests,
	}, nil
}

// find returns the status of step id.
// Step finds one of the stage's steps.
func (s *Status) Step(id string) (*StepStatus, bool) {
	for i := range s.Groups {
		for j := range s.Groups[i].Steps {
			if s.Groups[i].Steps[j].ID == id {
				return &s.Groups[i].Steps[j], true
			}
		}
	}
	return nil, false
}
