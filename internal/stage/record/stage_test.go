package record_test

import (
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/internal/stage/record"
)

func newStage(id string, deadline time.Time, groups ...record.NewGroup) record.NewStage {
	return record.NewStage{ID: id, Pool: "p", SpecHash: "h-" + id, Spec: []byte(`{}`), Sealed: []byte("sealed"), Deadline: deadline, Groups: groups}
}

func group(hash string, final bool, steps ...string) record.NewGroup {
	return record.NewGroup{SpecHash: hash, Spec: []byte(hash), StepIDs: steps, Final: final}
}

func TestStageLeaseIsOnePerStage(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	addIdle(t, s, "p", 5, 5)
	deadline := time.Now().Add(time.Hour).Truncate(time.Millisecond)
	st, err := s.CreateStage(ctx, newStage("s1", deadline))
	if err != nil || st.Version != 1 || !st.Deadline.Equal(deadline) {
		t.Fatalf("create: %+v %v", st, err)
	}
	if again, err := s.CreateStage(ctx, newStage("s1", deadline)); !errors.Is(err, record.ErrStageExists) || again.SpecHash != "h-s1" {
		t.Fatalf("create again: %+v %v", again, err)
	}
	// Ten concurrent acquires of one stage (retries, a duplicated event) get one VM.
	vms := make([]*lease.VM, 10)
	read := stageRecord(t, s, "s1")
	var fresh atomic.Int64
	var wg sync.WaitGroup
	for i := range vms {
		wg.Go(func() {
			vm, won, err := s.LeaseForStage(ctx, read, deadline)
			if err != nil {
				t.Error(err)
				return
			}
			if won {
				fresh.Add(1)
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
	if fresh.Load() != 1 {
		t.Fatalf("%d acquires say they leased the VM, want 1 (the lease is counted once)", fresh.Load())
	}
	d, _ := s.Depth(ctx, "p")
	if d.ByState[lease.Leased] != 1 || d.ByState[lease.Idle] != 4 {
		t.Fatalf("depth %s", d)
	}
	got, _ := s.GetStage(ctx, "s1")
	if got.VM != vms[0].LaunchID || got.LeasedAt.IsZero() {
		t.Fatalf("stage record: vm %q leased at %v", got.VM, got.LeasedAt)
	}
	bound, err := s.MarkBound(ctx, "s1", vms[0], "boot-1")
	if err != nil || bound.BootID != "boot-1" || bound.BoundAt.IsZero() || bound.Version <= got.Version {
		t.Fatalf("bound: %+v %v", bound, err)
	}
	if bound.VMAddress == "" || bound.VMAddress != vms[0].Address {
		t.Fatalf("bound to %q, the vm listens at %q", bound.VMAddress, vms[0].Address)
	}
	if _, err := s.MarkBound(ctx, "s1", &lease.VM{LaunchID: lease.NewLaunchID()}, "boot-1"); !errors.Is(err, lease.ErrNotHolder) {
		t.Fatalf("bound to another vm: %v", err)
	}
}

func TestStageReleaseHappensOnce(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	addIdle(t, s, "p", 2, 2)
	if _, err := s.CreateStage(ctx, newStage("s1", time.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	leased, _, err := s.LeaseForStage(ctx, stageRecord(t, s, "s1"), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	var released, refused atomic.Int64
	var wg sync.WaitGroup
	for range 2 { // the state machine's Catch and the EventBridge rule
		wg.Go(func() {
			vm, err := s.ReleaseStage(ctx, "s1", "error", "a function failed")
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
	if _, _, err := s.LeaseForStage(ctx, stageRecord(t, s, "s1"), time.Now().Add(time.Hour)); !errors.Is(err, lease.ErrReleased) {
		t.Fatalf("lease after release: %v", err)
	}
	st, _ := s.GetStage(ctx, "s1")
	if st.Sealed != nil || st.Result != "error" || st.Reason != "a function failed" || st.ReleasedAt.IsZero() {
		t.Fatalf("released stage: %+v", st)
	}
}

func TestStageCanceledBeforeItsVM(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	addIdle(t, s, "p", 1, 1)
	if _, err := s.CreateStage(ctx, newStage("s1", time.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	if _, err := s.EndStage(ctx, "s1", "canceled", "DELETE"); err != nil {
		t.Fatal(err)
	}
	if vm, err := s.ReleaseStage(ctx, "s1", "", ""); err != nil || vm != nil {
		t.Fatalf("release without a vm: %+v %v", vm, err)
	}
	if _, _, err := s.LeaseForStage(ctx, stageRecord(t, s, "s1"), time.Now().Add(time.Hour)); !errors.Is(err, lease.ErrReleased) {
		t.Fatalf("a canceled stage leased: %v", err)
	}
	if d, _ := s.Depth(ctx, "p"); d.ByState[lease.Idle] != 1 {
		t.Fatalf("depth %s", d)
	}
	if st, _ := s.GetStage(ctx, "s1"); st.Result != "canceled" {
		t.Fatalf("result %q: the release must keep the first result", st.Result)
	}
}

func TestStageReleaseAfterTheReaper(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	addIdle(t, s, "p", 1, 1)
	if _, err := s.CreateStage(ctx, newStage("s1", time.Now().Add(-time.Minute))); err != nil {
		t.Fatal(err)
	}
	vm, _, err := s.LeaseForStage(ctx, stageRecord(t, s, "s1"), time.Now().Add(-time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReleaseExpired(ctx, "p", vm.LaunchID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReleaseStage(ctx, "s1", "timed_out", "deadline"); err != nil {
		t.Fatalf("release after the reaper: %v", err)
	}
	if st, _ := s.GetStage(ctx, "s1"); st.ReleasedAt.IsZero() || st.Sealed != nil {
		t.Fatalf("stage not released: %+v", st)
	}
}

func TestEndStageOnce(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	if _, err := s.EndStage(ctx, "nope", "failed", "x"); !errors.Is(err, record.ErrStageNotFound) {
		t.Fatalf("end a stage that does not exist: %v", err)
	}
	if _, err := s.CreateStage(ctx, newStage("s1", time.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	var won atomic.Int64
	var wg sync.WaitGroup
	for i := range 5 {
		wg.Go(func() {
			_, err := s.EndStage(ctx, "s1", "canceled", fmt.Sprint("reason ", i))
			switch {
			case err == nil:
				won.Add(1)
			case !errors.Is(err, record.ErrStageEnded):
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if won.Load() != 1 {
		t.Fatalf("%d results recorded", won.Load())
	}
}

func TestCreateStageWithGroups(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	deadline := time.Now().Add(time.Hour)
	st, err := s.CreateStage(ctx, newStage("s1", deadline, group("g0", false, "a", "b"), group("g1", true, "c")))
	if err != nil || st.Groups != 2 || !st.Final || st.Cursor != 0 {
		t.Fatalf("create: %+v %v", st, err)
	}
	r, err := s.StageRecords(ctx, "s1")
	if err != nil || len(r.Groups) != 2 || r.Groups[1].Index != 1 || !r.Groups[1].Final || string(r.Groups[0].Spec) != "g0" {
		t.Fatalf("records: %+v %v", r, err)
	}
	if _, _, err := s.AddGroup(ctx, "s1", nil, group("g2", false, "d")); !errors.Is(err, record.ErrStageClosed) {
		t.Fatalf("a group added after the final one: %v", err)
	}
	if _, err := s.CreateStage(ctx, newStage("s2", deadline, make([]record.NewGroup, 100)...)); err == nil {
		t.Fatal("100 groups in one transaction")
	}
}

// The records an add answers are what a read after it says, and an add
// given records read before another add (or before its own first try)
// still lands right: the write's condition fails and it reads again.
func TestAddGroupAnswersTheRecordsItLeft(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	if _, err := s.CreateStage(ctx, newStage("s3", time.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	stale, err := s.StageRecords(ctx, "s3")
	if err != nil {
		t.Fatal(err)
	}
	first, after, err := s.AddGroup(ctx, "s3", stale, group("a", false, "a"))
	if err != nil || first.Index != 0 {
		t.Fatalf("add: %+v %v", first, err)
	}
	read, err := s.StageRecords(ctx, "s3")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := *after.Stage, *read.Stage; got.Version != want.Version || got.Groups != want.Groups || got.Final != want.Final || got.Version != stale.Stage.Version+1 {
		t.Fatalf("answered stage %+v, read %+v", got, want)
	}
	if !reflect.DeepEqual(after.Groups, read.Groups) {
		t.Fatalf("answered groups %+v, read %+v", after.Groups, read.Groups)
	}
	if len(stale.Groups) != 0 || stale.Stage.Groups != 0 {
		t.Fatalf("the records given were changed: %+v", stale)
	}
	// The answered records know the step ids: the same add again is the
	// same group, without another write.
	if again, _, err := s.AddGroup(ctx, "s3", after, group("a", false, "a")); err != nil || again.Index != 0 {
		t.Fatalf("retry with the answered records: %+v %v", again, err)
	}
	// The stale records know neither the group nor its step.
	if again, _, err := s.AddGroup(ctx, "s3", stale, group("a", false, "a")); err != nil || again.Index != 0 {
		t.Fatalf("retry with stale records: %+v %v", again, err)
	}
	second, after, err := s.AddGroup(ctx, "s3", stale, group("b", true, "b"))
	if err != nil || second.Index != 1 || after.Stage.Groups != 2 || !after.Stage.Final {
		t.Fatalf("add with stale records: %+v %+v %v", second, after.Stage, err)
	}
}

func TestAddGroup(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	if _, _, err := s.AddGroup(ctx, "nope", nil, group("g", false, "a")); !errors.Is(err, record.ErrStageNotFound) {
		t.Fatalf("a group of a stage that does not exist: %v", err)
	}
	if _, err := s.CreateStage(ctx, newStage("s1", time.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	// Ten delegates add at once: ten groups, indexes 0-9, none lost.
	var mu sync.Mutex
	seen := map[int]string{}
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Go(func() {
			g, _, err := s.AddGroup(ctx, "s1", nil, group(fmt.Sprint("g", i), false, fmt.Sprint("step-", i)))
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if other, dup := seen[g.Index]; dup {
				t.Errorf("index %d given to %s and %s", g.Index, other, g.SpecHash)
			}
			seen[g.Index] = g.SpecHash
		})
	}
	wg.Wait()
	if len(seen) != 10 {
		t.Fatalf("%d groups", len(seen))
	}
	// A retried request gets the same group; a step id reused is refused.
	again, _, err := s.AddGroup(ctx, "s1", nil, group("g3", false, "step-3"))
	if err != nil || again.SpecHash != "g3" {
		t.Fatalf("retry: %+v %v", again, err)
	}
	if _, _, err := s.AddGroup(ctx, "s1", nil, group("other", false, "new", "step-3")); !errors.Is(err, record.ErrStepExists) {
		t.Fatalf("a step id used twice: %v", err)
	}
	last, _, err := s.AddGroup(ctx, "s1", nil, group("last", true, "z"))
	if err != nil || last.Index != 10 || !last.Final {
		t.Fatalf("final group: %+v %v", last, err)
	}
	if _, _, err := s.AddGroup(ctx, "s1", nil, group("late", false, "y")); !errors.Is(err, record.ErrStageClosed) {
		t.Fatalf("after the final group: %v", err)
	}
	if st, _ := s.GetStage(ctx, "s1"); st.Groups != 11 || !st.Final {
		t.Fatalf("stage %+v", st)
	}

	if _, err := s.CreateStage(ctx, newStage("s2", time.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	if _, err := s.EndStage(ctx, "s2", "timed_out", "idle"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.AddGroup(ctx, "s2", nil, group("g", false, "a")); !errors.Is(err, record.ErrStageEnded) {
		t.Fatalf("a group added to an ended stage: %v", err)
	}
}

func TestFinishGroup(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	st, err := s.CreateStage(ctx, newStage("s1", time.Now().Add(time.Hour), group("g0", false, "a", "b"), group("g1", true, "c")))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Truncate(time.Millisecond)
	end := record.GroupEnd{
		State: "succeeded", StartedAt: now.Add(-time.Second), EndedAt: now,
		Steps: []record.StepRecord{{ID: "a", State: "succeeded", Result: []byte(`{"exit_code":0}`)}, {ID: "b", State: "succeeded"}},
	}
	// Two invocations finish the same group (a retry): one records it.
	var won, moved atomic.Int64
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			_, err := s.FinishGroup(ctx, st, 0, end)
			switch {
			case err == nil:
				won.Add(1)
			case errors.Is(err, record.ErrGroupMoved):
				moved.Add(1)
			default:
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if won.Load() != 1 || moved.Load() != 1 {
		t.Fatalf("%d finished, %d moved", won.Load(), moved.Load())
	}
	failed := record.GroupEnd{State: "failed", StartedAt: now, EndedAt: now, Steps: []record.StepRecord{{ID: "c", State: "failed"}}, Result: "failed", Reason: "step c failed"}
	after, err := s.FinishGroup(ctx, st, 1, failed)
	if err != nil || after.Cursor != 2 || after.Result != "failed" || !after.GroupEndedAt.Equal(now) {
		t.Fatalf("after the last group: %+v %v", after, err)
	}
	r, err := s.StageRecords(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if a := r.Steps["a"]; a.State != "succeeded" || a.Group != 0 || string(a.Result) != `{"exit_code":0}` {
		t.Fatalf("step a: %+v", a)
	}
	if c := r.Steps["c"]; c.State != "failed" || c.Group != 1 {
		t.Fatalf("step c: %+v", c)
	}
	if g := r.Groups[0]; g.State != "succeeded" || !g.StartedAt.Equal(now.Add(-time.Second)) || !g.EndedAt.Equal(now) {
		t.Fatalf("group 0: %+v", g)
	}
	if _, err := s.ReleaseStage(ctx, "s1", "", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.FinishGroup(ctx, after, 2, end); !errors.Is(err, record.ErrGroupMoved) {
		t.Fatalf("a group finished after the release: %v", err)
	}
}

func TestSecretsGoWithTheRelease(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	g := group("g0", true, "a")
	g.Sealed = []byte("sealed step secrets")
	if _, err := s.CreateStage(ctx, newStage("s1", time.Now().Add(time.Hour), g)); err != nil {
		t.Fatal(err)
	}
	r, _ := s.StageRecords(ctx, "s1")
	if string(r.Stage.Sealed) != "sealed" || string(r.Groups[0].Sealed) != "sealed step secrets" {
		t.Fatalf("sealed secrets not recorded: %+v", r)
	}
	if _, err := s.ReleaseStage(ctx, "s1", "succeeded", ""); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteSecrets(ctx, "s1", r.Groups); err != nil {
		t.Fatal(err)
	}
	r, _ = s.StageRecords(ctx, "s1")
	if r.Stage.Sealed != nil || r.Groups[0].Sealed != nil {
		t.Fatalf("secrets kept after the release: %q %q", r.Stage.Sealed, r.Groups[0].Sealed)
	}
}

func TestDropStageVM(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	addIdle(t, s, "p", 2, 2)
	if _, err := s.CreateStage(ctx, newStage("s1", time.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	first, _, err := s.LeaseForStage(ctx, stageRecord(t, s, "s1"), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	dropped, err := s.DropStageVM(ctx, "s1", first.LaunchID)
	if err != nil || dropped.State != lease.Releasing {
		t.Fatalf("drop: %+v %v", dropped, err)
	}
	second, _, err := s.LeaseForStage(ctx, stageRecord(t, s, "s1"), time.Now().Add(time.Hour))
	if err != nil || second.LaunchID == first.LaunchID {
		t.Fatalf("lease after the drop: %+v %v", second, err)
	}
	if st, _ := s.GetStage(ctx, "s1"); st.Dropped != 1 || st.VM != second.LaunchID {
		t.Fatalf("stage %+v", st)
	}
	if _, err := s.MarkBound(ctx, "s1", second, "boot"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DropStageVM(ctx, "s1", second.LaunchID); !errors.Is(err, lease.ErrState) {
		t.Fatalf("a bound vm dropped: %v", err)
	}
}

func TestSetLaunched(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	if _, err := s.CreateStage(ctx, newStage("s1", time.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	id := lease.NewLaunchID()
	if err := s.SetLaunched(ctx, "s1", id); err != nil {
		t.Fatal(err)
	}
	if err := s.SetLaunched(ctx, "s1", lease.NewLaunchID()); !errors.Is(err, lease.ErrExists) {
		t.Fatalf("a second launch for one stage: %v", err)
	}
	if st, _ := s.GetStage(ctx, "s1"); st.Launched != id {
		t.Fatalf("launched %q", st.Launched)
	}
}

// stageRecord reads a stage's record, as a handler does before it acts.
func stageRecord(t testing.TB, s *books, id string) *record.Stage {
	t.Helper()
	st, err := s.GetStage(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	return st
}
