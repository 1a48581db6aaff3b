package record

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/slipway-ci/slipway/internal/ddb"
	"github.com/slipway-ci/slipway/internal/lease"
)

// The transactions that span a stage and its VM: each writes the stage's
// record and the VM's item at once, so a stage holds at most one VM, a
// retried lease gets the same one, and only one release ever frees it.

// LeaseForStage gives the stage, as the caller just read it, an idle VM of
// its pool until leaseDeadline, writing the VM item and the stage record in
// one transaction (whose conditions catch a record that moved since). A
// stage that holds a VM gets the same VM again; a released stage gets
// lease.ErrReleased. fresh says this call leased it (the one to count the lease).
func (s *Store) LeaseForStage(ctx context.Context, st *Stage, leaseDeadline time.Time) (vm *lease.VM, fresh bool, err error) {
	if !st.ReleasedAt.IsZero() {
		return nil, false, fmt.Errorf("lease for stage %s: %w", st.ID, lease.ErrReleased)
	}
	if st.VM != "" {
		vm, err := s.vms().Get(ctx, st.Pool, st.VM)
		return vm, false, err
	}
	vm, err = s.vms().LeaseAny(ctx, st.Pool, func(launchID string) (*lease.VM, bool, error) {
		vm, taken, won, err := s.tryLeaseForStage(ctx, st, launchID, leaseDeadline)
		fresh = won
		return vm, taken, err
	})
	if err != nil {
		return nil, false, fmt.Errorf("stage %s: %w", st.ID, err)
	}
	return vm, fresh, nil
}

// tryLeaseForStage leases one candidate; taken says another lessee had it,
// won that this call's transaction leased it (else a concurrent lease of
// the same stage did, and vm is the one it leased).
func (s *Store) tryLeaseForStage(ctx context.Context, st *Stage, launchID string, leaseDeadline time.Time) (vm *lease.VM, taken, won bool, err error) {
	now := s.now()
	in := &dynamodb.TransactWriteItemsInput{TransactItems: []types.TransactWriteItem{
		{Update: s.vms().LeaseUpdate(st.Pool, launchID, st.ID, leaseDeadline, now)},
		{Update: s.stageUpdate(st.ID, ddb.Change{
			Set:    []string{"#vm = :vm", "#la = :now"},
			Cond:   "attribute_not_exists(#vm) AND attribute_not_exists(#rel)",
			Names:  map[string]string{"#vm": attrVM, "#la": attrLeasedAt, "#rel": attrReleasedAt},
			Values: map[string]types.AttributeValue{":vm": ddb.Str(launchID), ":now": ddb.Millis(now)},
		})},
	}}
	errTaken := errors.New("taken")
	err = ddb.Transact(ctx, s.DB, in, errTaken, errStageMoved)
	switch {
	case err == nil:
		vm, err := s.vms().Get(ctx, st.Pool, launchID)
		return vm, false, err == nil, err
	case errors.Is(err, errTaken), errors.Is(err, ddb.ErrConflict):
		return nil, true, false, nil
	case errors.Is(err, errStageMoved):
		// A concurrent acquire of the same stage won, or it was released.
		cur, gerr := s.GetStage(ctx, st.ID)
		if gerr != nil {
			return nil, false, false, gerr
		}
		if !cur.ReleasedAt.IsZero() {
			return nil, false, false, fmt.Errorf("lease for stage %s: %w", st.ID, lease.ErrReleased)
		}
		vm, gerr := s.vms().Get(ctx, cur.Pool, cur.VM)
		return vm, false, false, gerr
	default:
		return nil, false, false, fmt.Errorf("lease vm %s for stage %s: %w", launchID, st.ID, err)
	}
}

// DropStageVM gives up the stage's VM before it was bound (its agent never
// answered): the VM goes to releasing, to be terminated and removed, and the
// stage may lease another. It returns the VM as it is now.
func (s *Store) DropStageVM(ctx context.Context, stageID, launchID string) (*lease.VM, error) {
	st, err := s.liveStage(ctx, stageID, "drop the vm of")
	if err != nil {
		return nil, err
	}
	in := &dynamodb.TransactWriteItemsInput{TransactItems: []types.TransactWriteItem{
		{Update: s.stageUpdate(stageID, ddb.Change{
			Set:    []string{"#d = if_not_exists(#d, :zero) + :one"},
			Remove: []string{"#vm", "#la"},
			Cond:   "#vm = :vm AND attribute_not_exists(#b) AND attribute_not_exists(#rel)",
			Names:  map[string]string{"#d": attrDropped, "#vm": attrVM, "#la": attrLeasedAt, "#b": attrBoundAt, "#rel": attrReleasedAt},
			Values: map[string]types.AttributeValue{":vm": ddb.Str(launchID), ":zero": ddb.Num(0)},
		})},
		{Update: s.vms().ReleaseUpdate(st.Pool, launchID, stageID, s.now())},
	}}
	if err := ddb.Transact(ctx, s.DB, in, lease.ErrState, lease.ErrState); err != nil {
		return nil, fmt.Errorf("drop vm %s of stage %s: %w", launchID, stageID, err)
	}
	return s.vms().Get(ctx, st.Pool, launchID)
}

// ReleaseStage ends the stage's lease: its VM goes to releasing, the stage
// is marked released (with result and reason, unless it has a result) and
// its secrets are deleted, in one transaction, exactly once. A stage that
// never got a VM is released too (nil VM). A second release gets
// lease.ErrReleased.
func (s *Store) ReleaseStage(ctx context.Context, stageID, result, reason string) (*lease.VM, error) {
	st, err := s.liveStage(ctx, stageID, "release")
	if err != nil {
		return nil, err
	}
	now := s.now()
	// The stage's own writes (its record, its owner's count), then its VM's.
	items := []types.TransactWriteItem{{Update: s.releaseUpdate(stageID, st.VM, result, reason, now)}}
	reasons := []error{lease.ErrReleased}
	if st.counted {
		items = append(items, types.TransactWriteItem{Update: s.uncountStage(st.Owner)})
		reasons = append(reasons, nil)
	}
	own := len(items)
	if st.VM != "" {
		items = append(items, types.TransactWriteItem{Update: s.vms().ReleaseUpdate(st.Pool, st.VM, stageID, now)})
		reasons = append(reasons, errVMMoved)
	}
	err = ddb.Transact(ctx, s.DB, &dynamodb.TransactWriteItemsInput{TransactItems: items}, reasons...)
	if errors.Is(err, errVMMoved) {
		// The reaper released the lease past its deadline, or reconcile removed
		// a VM whose instance was gone: the stage's VM is already on its way out.
		err = ddb.Transact(ctx, s.DB, &dynamodb.TransactWriteItemsInput{TransactItems: items[:own]}, lease.ErrReleased)
		if err == nil {
			return nil, nil
		}
	}
	if errors.Is(err, lease.ErrReleased) {
		// A concurrent release won, or a lease landed meanwhile: look again.
		if cur, gerr := s.GetStage(ctx, stageID); gerr == nil && cur.ReleasedAt.IsZero() {
			return s.ReleaseStage(ctx, stageID, result, reason)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("release stage %s: %w", stageID, err)
	}
	if st.VM == "" {
		return nil, nil
	}
	return s.vms().Get(ctx, st.Pool, st.VM)
}

var errVMMoved = errors.New("the stage's vm is no longer leased to it")

// releaseUpdate marks the stage released, on the condition that it still
// holds vm (or none), and deletes its secrets.
func (s *Store) releaseUpdate(stageID, vm, result, reason string, now time.Time) *types.Update {
	c := ddb.Change{
		Set:    []string{"#rel = :now"},
		Remove: []string{"#sealed"},
		Cond:   "attribute_not_exists(#rel) AND attribute_not_exists(#vm)",
		Names:  map[string]string{"#rel": attrReleasedAt, "#vm": attrVM, "#sealed": attrSealed},
		Values: map[string]types.AttributeValue{":now": ddb.Millis(now)},
	}
	if vm != "" {
		c.Cond = "attribute_not_exists(#rel) AND #vm = :vm"
		c.Values[":vm"] = ddb.Str(vm)
	}
	ending(&c, result, reason, now)
	return s.stageUpdate(stageID, c)
}
