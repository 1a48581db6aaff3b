package warm_test

import (
	"context"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/agent/agenttest"
	"github.com/slipway-ci/slipway/internal/fleet"
	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/internal/warm"
)

// TestWarmPoolOfRealAgents: refill a pool on the local fleet (agent
// processes), probe them over mTLS with the agent client until they are
// idle, lease one and run a step on it.
func TestWarmPoolOfRealAgents(t *testing.T) {
	e := newEnv(t, testPool("local", 2, 3))
	local := &fleet.Local{Dir: t.TempDir(), AgentPath: agenttest.BuildAgent(t)}
	defer local.Close()
	k := e.keeper
	k.Fleet = local
	// The function's own client certificate, from the same CA.
	orch := agenttest.NewOrchestrator(t, k.CA)
	k.Prober = &warm.AgentProber{RootCAs: orch.Roots, Certificate: orch.Certificate}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for idle := 0; idle < 2; {
		r, err := k.Refill(ctx)
		if err != nil {
			t.Fatal(err)
		}
		idle = r[0].Idle
		if ctx.Err() != nil {
			t.Fatal("the agents never became idle")
		}
		time.Sleep(100 * time.Millisecond)
	}
	vm, err := e.leaseStage(t, "local", "stage-1", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	c := orch.Client(t, vm.Address, vm.LaunchID)
	if _, err := c.BindStage(ctx, &agentapi.Stage{ID: "stage-1"}); err != nil {
		t.Fatal(err)
	}
	st, err := c.RunStep(ctx, "stage-1", "hello", &agentapi.Step{Command: []string{"echo", vm.LaunchID}})
	if err != nil || st.State != agentapi.StepSucceeded {
		t.Fatalf("step on the leased vm: %+v %v", st, err)
	}
	// Release, terminate, remove: the agent process is gone, capacity back.
	if _, err := e.stages().ReleaseStage(ctx, "stage-1", "passed", ""); err != nil {
		t.Fatal(err)
	}
	if err := local.Terminate(ctx, vm.InstanceID); err != nil {
		t.Fatal(err)
	}
	if err := e.store.Remove(ctx, "local", vm.LaunchID, lease.Releasing); err != nil {
		t.Fatal(err)
	}
	if c, _ := e.store.Capacity(ctx, "local"); c != 1 {
		t.Fatalf("capacity %d, want 1", c)
	}
}
