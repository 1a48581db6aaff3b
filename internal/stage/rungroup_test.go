package stage_test

import (
	"strings"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/agent/agenttest"
	"github.com/slipway-ci/slipway/internal/stage"
)

// TestRecheckWindows: RunGroup long-polls a group it starts for Poll, and a
// group the last RunGroup left running only for Recheck, so a long step
// holds a Lambda for a small share of its time; an agent that stops
// answering during a recheck still gets its whole grace and no more, so
// the step fails instead of being rechecked forever.
func TestRecheckWindows(t *testing.T) {
	e := newEnv(t, testPool("p", 1, 2))
	e.tune(func(s *stage.Settings) {
		s.Poll = 2 * time.Second
		s.Recheck = 300 * time.Millisecond
		s.AgentGrace = 1500 * time.Millisecond
	})
	e.warmUp(t, "p", 1)
	ctx := agenttest.Context(t)
	spec := stage.Spec{ID: "recheck", Pool: "p", Groups: []stage.Group{
		{Steps: []stage.Step{{ID: "long", Step: script("sleep 120")}}, Final: true},
	}}
	if a := e.do(t, "POST", "/v1/stages", spec, true); a.status != 201 {
		t.Fatalf("create: %d %s", a.status, a.body)
	}
	if out, err := stage.NewInit(e.deps).Handle(ctx, stage.Input{StageID: "recheck"}); err != nil || out.Status != stage.StatusLeased {
		t.Fatalf("init: %+v %v", out, err)
	}
	run := stage.NewRunGroup(e.deps)
	call := func(status string) (stage.Output, time.Duration) {
		t.Helper()
		start := time.Now()
		out, err := run.Handle(ctx, stage.Input{StageID: "recheck", Status: status})
		if err != nil {
			t.Fatal(err)
		}
		return out, time.Since(start)
	}
	if out, took := call(stage.StatusLeased); out.Status != stage.StatusRunning || took < 2*time.Second || took > 4*time.Second {
		t.Fatalf("first RunGroup: %+v after %s, want running after Poll (2s)", out, took)
	}
	if out, took := call(stage.StatusRunning); out.Status != stage.StatusRunning || took > 1500*time.Millisecond {
		t.Fatalf("recheck: %+v after %s, want running after Recheck (300ms)", out, took)
	}

	st := e.status(t, "recheck")
	vm, err := e.store.Get(ctx, "p", st.VM)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.keeper.Fleet.Terminate(ctx, vm.InstanceID); err != nil {
		t.Fatal(err)
	}
	out, took := call(stage.StatusRunning)
	if out.Status != stage.StatusDone || took < 1500*time.Millisecond {
		t.Fatalf("recheck of a dead agent: %+v after %s, want done after the grace (1.5s)", out, took)
	}
	st = e.status(t, "recheck")
	step := st.Groups[0].Steps[0]
	if st.Result != stage.Errored || step.State != "error" || !strings.Contains(step.Error, "the agent did not answer for 1.5s") {
		t.Fatalf("stage after the agent died: %+v", st)
	}
	if _, err := stage.NewCleanup(e.deps).Handle(ctx, stage.CleanupInput{StageID: "recheck"}); err != nil {
		t.Fatal(err)
	}
}

func (e *env) status(t *testing.T, id string) *stage.Status {
	t.Helper()
	var st stage.Status
	e.do(t, "GET", "/v1/stages/"+id, nil, true).decode(t, &st)
	return &st
}
