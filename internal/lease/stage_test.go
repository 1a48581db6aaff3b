package lease_test

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/internal/lease"
)

func TestStageLeaseIsOnePerStage(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	addIdle(t, s, "p", 5, 5)
	deadline := time.Now().Add(time.Hour).Truncate(time.Millisecond)
	st, err := s.CreateStage(ctx, "s1", "p", deadline)
	if err != nil || st.State != "pending" {
		t.Fatalf("create: %+v %v", st, err)
	}
	if again, err := s.CreateStage(ctx, "s1", "p", deadline); !errors.Is(err, lease.ErrStageExists) || again.ID != "s1" {
		t.Fatalf("create again: %+v %v", again, err)
	}
	// Ten concurrent acquires of one stage (retries, a duplicated event) get one VM.
	vms := make([]*lease.VM, 10)
	var wg sync.WaitGroup
	for i := range vms {
		wg.Go(func() {
			vm, err := s.LeaseForStage(ctx, "s1")
			if err != nil {
				t.Error(err)
				return
			}
			vms[i] = vm
		})
	}
	wg.Wait()
	for _, vm := range vms {
		if vm == nil || vm.LaunchID != vms[0].LaunchID || vm.Stage != "s1" || !vm.LeaseDeadline.Equal(deadline) {
			t.Fatalf("acquires disagree: %+v vs %+v", vm, vms[0])
		}
	}
	d, _ := s.Depth(ctx, "p")
	if d.ByState[lease.Leased] != 1 || d.ByState[lease.Idle] != 4 {
		t.Fatalf("depth %s", d)
	}
	if got, _ := s.GetStage(ctx, "s1"); got.VM != vms[0].LaunchID {
		t.Fatalf("stage record names vm %q", got.VM)
	}
}

func TestStageReleaseHappensOnce(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	addIdle(t, s, "p", 2, 2)
	if _, err := s.CreateStage(ctx, "s1", "p", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	leased, err := s.LeaseForStage(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	var released, refused atomic.Int64
	var wg sync.WaitGroup
	for range 2 { // the state machine's Catch and the EventBridge rule
		wg.Go(func() {
			vm, err := s.ReleaseStage(ctx, "s1")
			switch {
			case err == nil && vm.LaunchID == leased.LaunchID && vm.State == lease.Releasing:
				released.Add(1)
			case errors.Is(err, lease.ErrReleased):
				refused.Add(1)
			default:
				t.Errorf("release: %+v %v", vm, err)
			}
		})
	}
	wg.Wait()
	if released.Load() != 1 || refused.Load() != 1 {
		t.Fatalf("%d releases, %d refusals", released.Load(), refused.Load())
	}
	if _, err := s.LeaseForStage(ctx, "s1"); !errors.Is(err, lease.ErrReleased) {
		t.Fatalf("lease after release: %v", err)
	}
}

func TestStageCanceledBeforeItsVM(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	addIdle(t, s, "p", 1, 1)
	if _, err := s.CreateStage(ctx, "s1", "p", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if vm, err := s.ReleaseStage(ctx, "s1"); err != nil || vm != nil {
		t.Fatalf("release without a vm: %+v %v", vm, err)
	}
	if _, err := s.LeaseForStage(ctx, "s1"); !errors.Is(err, lease.ErrReleased) {
		t.Fatalf("a canceled stage leased: %v", err)
	}
	if d, _ := s.Depth(ctx, "p"); d.ByState[lease.Idle] != 1 {
		t.Fatalf("depth %s", d)
	}
}

func TestStageReleaseAfterTheReaper(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	addIdle(t, s, "p", 1, 1)
	if _, err := s.CreateStage(ctx, "s1", "p", time.Now().Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	vm, err := s.LeaseForStage(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReleaseExpired(ctx, "p", vm.LaunchID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReleaseStage(ctx, "s1"); err != nil {
		t.Fatalf("release after the reaper: %v", err)
	}
	if st, _ := s.GetStage(ctx, "s1"); st.ReleasedAt.IsZero() {
		t.Fatal("stage not marked released")
	}
}

func TestSteps(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	if err := s.PutStep(ctx, "nope", lease.Step{ID: "a"}); err == nil {
		t.Fatal("a step of a stage that does not exist")
	}
	if _, err := s.CreateStage(ctx, "s1", "p", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	spec := []byte(`{"command":["make"]}`)
	if err := s.PutStep(ctx, "s1", lease.Step{ID: "build", State: "pending", Spec: spec}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutStep(ctx, "s1", lease.Step{ID: "build", State: "pending", Spec: spec}); err != nil {
		t.Fatalf("same step again: %v", err)
	}
	if err := s.PutStep(ctx, "s1", lease.Step{ID: "build", State: "pending", Spec: []byte(`{}`)}); !errors.Is(err, lease.ErrExists) {
		t.Fatalf("another spec: %v", err)
	}
	if err := s.UpdateStep(ctx, "s1", "build", "running", "succeeded", nil); !errors.Is(err, lease.ErrState) {
		t.Fatalf("update from the wrong state: %v", err)
	}
	if err := s.UpdateStep(ctx, "s1", "build", "pending", "succeeded", []byte(`{"exit_code":0}`)); err != nil {
		t.Fatal(err)
	}
	steps, err := s.Steps(ctx, "s1")
	if err != nil || len(steps) != 1 || steps[0].State != "succeeded" || string(steps[0].Result) != `{"exit_code":0}` || string(steps[0].Spec) != string(spec) {
		t.Fatalf("steps %+v %v", steps, err)
	}
	if err := s.SetStageState(ctx, "s1", "running", "done"); !errors.Is(err, lease.ErrState) {
		t.Fatalf("stage from the wrong state: %v", err)
	}
	if err := s.SetStageState(ctx, "s1", "pending", "running"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReleaseStage(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if err := s.PutStep(ctx, "s1", lease.Step{ID: "late", Spec: spec}); err == nil {
		t.Fatal("a step added to a released stage")
	}
}
