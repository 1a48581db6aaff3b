package lease_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/internal/awstest"
	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/internal/lease/leasetest"
	"github.com/slipway-ci/slipway/internal/stage/record"
)

func newStore(t testing.TB) *lease.Store {
	t.Helper()
	db, table := awstest.Table(t)
	return &lease.Store{DB: db, Table: table}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// addIdle records n VMs in pool and brings them to idle.
func addIdle(t testing.TB, s *lease.Store, pool string, n, max int) {
	t.Helper()
	ctx := ctxT(t)
	if err := leasetest.AddIdle(ctx, s, pool, n, max); err != nil {
		t.Fatal(err)
	}
}

// stages is the stage records of the store's table: a VM is leased to a
// stage in one transaction with the stage's record.
func stages(s *lease.Store) *record.Store { return &record.Store{DB: s.DB, Table: s.Table} }

// leaseStage creates a stage of pool and leases it a VM until deadline, as
// init does.
func leaseStage(t testing.TB, s *lease.Store, pool, id string, deadline time.Time) (*lease.VM, error) {
	t.Helper()
	ctx := ctxT(t)
	st, err := stages(s).CreateStage(ctx, record.NewStage{ID: id, Pool: pool, SpecHash: "h-" + id, Deadline: deadline})
	if err != nil {
		t.Fatal(err)
	}
	vm, _, err := stages(s).LeaseForStage(ctx, st, deadline)
	return vm, err
}

func TestLifecycle(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	id := lease.NewLaunchID()
	vm, err := s.RecordLaunch(ctx, lease.Launch{Pool: "p", LaunchID: id, Max: 2})
	if err != nil || vm.State != lease.Launching {
		t.Fatalf("record: %+v %v", vm, err)
	}
	if _, err := s.MarkIdle(ctx, "p", id); !errors.Is(err, lease.ErrState) {
		t.Fatalf("idle before provisioning: %v, want ErrState", err)
	}
	vm, err = s.MarkProvisioning(ctx, "p", id, "i-1", "10.0.0.1", "t3.small")
	if err != nil || vm.InstanceID != "i-1" || vm.State != lease.Provisioning {
		t.Fatalf("provisioning: %+v %v", vm, err)
	}
	if _, err := s.MarkIdle(ctx, "p", id); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Hour).Truncate(time.Millisecond)
	vm, err = leaseStage(t, s, "p", "stage-a", deadline)
	if err != nil || vm.LaunchID != id || vm.Stage != "stage-a" || !vm.LeaseDeadline.Equal(deadline) {
		t.Fatalf("lease: %+v %v", vm, err)
	}
	if _, err := leaseStage(t, s, "p", "stage-b", deadline); !errors.Is(err, lease.ErrNoIdle) {
		t.Fatalf("second lease: %v, want ErrNoIdle", err)
	}
	if vm, err := stages(s).ReleaseStage(ctx, "stage-b", "error", "no vm"); err != nil || vm != nil {
		t.Fatalf("release of a stage without a vm: %+v %v", vm, err)
	}
	if err := s.Remove(ctx, "p", id, lease.Releasing); !errors.Is(err, lease.ErrState) {
		t.Fatalf("remove while leased: %v, want ErrState", err)
	}
	vm, err = stages(s).ReleaseStage(ctx, "stage-a", "passed", "")
	if err != nil || vm.State != lease.Releasing {
		t.Fatalf("release: %+v %v", vm, err)
	}
	if _, err := stages(s).ReleaseStage(ctx, "stage-a", "passed", ""); !errors.Is(err, lease.ErrReleased) {
		t.Fatalf("second release: %v, want ErrReleased", err)
	}
	if c, _ := s.Capacity(ctx, "p"); c != 1 {
		t.Fatalf("capacity %d before remove, want 1", c)
	}
	if err := s.Remove(ctx, "p", id, lease.Releasing); err != nil {
		t.Fatal(err)
	}
	if c, _ := s.Capacity(ctx, "p"); c != 0 {
		t.Fatalf("capacity %d after remove, want 0", c)
	}
	if _, err := s.Get(ctx, "p", id); !errors.Is(err, lease.ErrNotFound) {
		t.Fatalf("get after remove: %v", err)
	}
}

func TestRecordLaunchHoldsTheMax(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	const max = 7
	var ok, full atomic.Int64
	var wg sync.WaitGroup
	for range 30 {
		wg.Go(func() {
			_, err := s.RecordLaunch(ctx, lease.Launch{Pool: "p", LaunchID: lease.NewLaunchID(), Max: max})
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, lease.ErrPoolFull):
				full.Add(1)
			default:
				t.Error(err)
			}
		})
	}
	wg.Wait()
	vms, err := s.List(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	c, _ := s.Capacity(ctx, "p")
	if ok.Load() != max || full.Load() != 30-max || len(vms) != max || c != max {
		t.Fatalf("recorded %d, full %d, items %d, capacity %d; want %d recorded", ok.Load(), full.Load(), len(vms), c, max)
	}
	id := vms[0].LaunchID
	if err := s.Remove(ctx, "p", id, lease.Launching); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RecordLaunch(ctx, lease.Launch{Pool: "p", LaunchID: vms[1].LaunchID, Max: max}); !errors.Is(err, lease.ErrExists) {
		t.Fatalf("record a recorded id: %v, want ErrExists", err)
	}
	if c, _ := s.Capacity(ctx, "p"); c != max-1 {
		t.Fatalf("a refused record changed the capacity to %d", c)
	}
}

func TestBadInput(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	tests := []struct {
		name string
		call func() error
	}{
		{name: "empty pool", call: func() error {
			_, err := s.RecordLaunch(ctx, lease.Launch{LaunchID: lease.NewLaunchID(), Max: 1})
			return err
		}},
		{name: "bad launch id", call: func() error {
			_, err := s.RecordLaunch(ctx, lease.Launch{Pool: "p", LaunchID: "../x", Max: 1})
			return err
		}},
		{name: "zero max", call: func() error {
			_, err := s.RecordLaunch(ctx, lease.Launch{Pool: "p", LaunchID: lease.NewLaunchID()})
			return err
		}},
		{name: "no instance id", call: func() error {
			_, err := s.MarkProvisioning(ctx, "p", lease.NewLaunchID(), "", "", "")
			return err
		}},
		{name: "unknown vm", call: func() error { _, err := s.Retire(ctx, "p", lease.NewLaunchID(), lease.Idle); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	if c, _ := s.Capacity(ctx, "p"); c != 0 {
		t.Fatalf("bad input changed the capacity to %d", c)
	}
}

func TestLeaseExpiry(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	addIdle(t, s, "p", 3, 5)
	a, err := leaseStage(t, s, "p", "stage-a", time.Now().Add(-time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	b, err := leaseStage(t, s, "p", "stage-b", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReleaseExpired(ctx, "p", b.LaunchID); !errors.Is(err, lease.ErrState) {
		t.Fatalf("expire a live lease: %v, want ErrState", err)
	}
	if vm, err := s.ReleaseExpired(ctx, "p", a.LaunchID); err != nil || vm.State != lease.Releasing {
		t.Fatalf("expire: %+v %v", vm, err)
	}
	if _, err := s.ReleaseExpired(ctx, "p", a.LaunchID); !errors.Is(err, lease.ErrState) {
		t.Fatalf("expire twice: %v, want ErrState", err)
	}
	d, err := s.Depth(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	if d.Capacity != 3 || d.ByState[lease.Idle] != 1 || d.ByState[lease.Leased] != 1 || d.ByState[lease.Releasing] != 1 {
		t.Fatalf("depth %s", d)
	}
}

// TestContention: 100 stages lease at once from 20 idle VMs, 15 rounds:
// never two leases on one VM, no lease lost, every stage gets a VM or
// ErrNoIdle.
func TestContention(t *testing.T) {
	s := newStore(t)
	const acquirers, vms, rounds = 100, 20, 15
	for round := range rounds {
		// A deadline per round: on a loaded machine the whole test takes
		// minutes, and no call of a round should wait that long.
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		pool := fmt.Sprintf("pool-%d", round)
		addIdle(t, s, pool, vms, vms)
		var mu sync.Mutex
		holder := map[string]string{} // launch id -> stage
		var noIdle atomic.Int64
		created := make([]*record.Stage, acquirers)
		var wg sync.WaitGroup
		for a := range created {
			wg.Go(func() {
				id := fmt.Sprintf("r%d-a%d", round, a)
				var err error
				if created[a], err = stages(s).CreateStage(ctx, record.NewStage{ID: id, Pool: pool, SpecHash: "h", Deadline: time.Now().Add(time.Hour)}); err != nil {
					t.Error(err)
				}
			})
		}
		if wg.Wait(); t.Failed() {
			t.FailNow()
		}
		for a, st := range created {
			wg.Go(func() {
				stage := st.ID
				vm, _, err := stages(s).LeaseForStage(ctx, st, time.Now().Add(time.Hour))
				if errors.Is(err, lease.ErrNoIdle) {
					noIdle.Add(1)
					return
				}
				if err != nil {
					t.Errorf("acquirer %d: %v", a, err)
					return
				}
				mu.Lock()
				defer mu.Unlock()
				if other, ok := holder[vm.LaunchID]; ok {
					t.Errorf("round %d: vm %s leased to %s and %s", round, vm.LaunchID, other, stage)
				}
				holder[vm.LaunchID] = stage
			})
		}
		wg.Wait()
		if len(holder) != vms || noIdle.Load() != acquirers-vms {
			t.Fatalf("round %d: %d leases, %d ErrNoIdle; want %d and %d", round, len(holder), noIdle.Load(), vms, acquirers-vms)
		}
		// The books agree with what the acquirers were told.
		items, err := s.List(ctx, pool)
		if err != nil {
			t.Fatal(err)
		}
		for _, vm := range items {
			if vm.State != lease.Leased || holder[vm.LaunchID] != vm.Stage {
				t.Fatalf("round %d: vm %s is %s for %q, acquirer told %q", round, vm.LaunchID, vm.State, vm.Stage, holder[vm.LaunchID])
			}
		}
	}
}
