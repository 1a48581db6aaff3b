package warm

import (
	"context"
	"errors"
	"maps"
	"slices"
	"time"

	"github.com/slipway-ci/slipway/internal/fleet"
	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/internal/metrics"
)

// ReconcileReport says what one reconcile did.
type ReconcileReport struct {
	OrphansTerminated int // instances of this deployment with no VM item
	GhostsRemoved     int // VM items whose instance is gone
	LaunchesAdopted   int // launching items whose instance exists after all
	MarkedMissing     int // items whose instance is gone, not yet for long
}

// Reconcile brings the books and the fleet into agreement. DescribeInstances
// is eventually consistent and lists terminated instances for about an
// hour, so it judges by state and age, never by one look:
//   - an instance with no VM item, older than the grace, is terminated (an
//     orphan: items are written before launches, so an in-flight launch
//     always has one);
//   - an item whose instance is terminated or missing is marked, and removed
//     once it has been so for the grace (a ghost); a releasing item, whose
//     termination was ordered, once it has been releasing for the grace;
//   - a launching item older than the grace (its refill died) is adopted if
//     its instance exists, else removed with its capacity.
func (k *Keeper) Reconcile(ctx context.Context) (ReconcileReport, error) {
	var r ReconcileReport
	// Instances first: an instance listed now had its item written before it
	// was launched, so the item list read next has it unless it was removed.
	instances, err := k.Fleet.List(ctx)
	if err != nil {
		return r, err
	}
	byLaunch := map[string]fleet.Instance{}
	pools := map[string]bool{}
	for _, p := range k.Pools {
		pools[p.Name] = true
	}
	for _, in := range instances {
		if cur, ok := byLaunch[in.LaunchID]; !ok || cur.State.Gone() {
			byLaunch[in.LaunchID] = in
		}
		if in.Pool != "" {
			pools[in.Pool] = true
		}
	}
	now := k.now()
	items := map[string]bool{}
	var errs []error
	perPool := map[string]*ReconcileReport{}
	for _, name := range slices.Sorted(maps.Keys(pools)) {
		pr := &ReconcileReport{}
		perPool[name] = pr
		vms, err := k.Books.List(ctx, name)
		if err != nil {
			errs = append(errs, err)
			// Without this pool's items, none of its instances may be judged.
			for _, in := range instances {
				if in.Pool == name {
					items[in.LaunchID] = true
				}
			}
			continue
		}
		for _, vm := range vms {
			items[vm.LaunchID] = true
			if err := k.reconcileItem(ctx, vm, byLaunch, now, pr); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, in := range instances {
		if in.State.Gone() || items[in.LaunchID] || now.Sub(in.LaunchedAt) <= k.grace() {
			continue
		}
		if err := k.Fleet.Terminate(ctx, in.ID); err != nil {
			errs = append(errs, err)
			continue
		}
		k.log().Warn("terminated orphan", "instance_id", in.ID, "launch_id", in.LaunchID, "pool", in.Pool)
		pr := perPool[in.Pool]
		if pr == nil {
			pr = &ReconcileReport{}
			perPool[in.Pool] = pr
		}
		pr.OrphansTerminated++
	}
	for name, pr := range perPool {
		r.OrphansTerminated += pr.OrphansTerminated
		r.GhostsRemoved += pr.GhostsRemoved
		r.LaunchesAdopted += pr.LaunchesAdopted
		r.MarkedMissing += pr.MarkedMissing
		k.emit(name, count(metrics.OrphansTerminated, pr.OrphansTerminated), count(metrics.GhostsRemoved, pr.GhostsRemoved))
	}
	return r, errors.Join(errs...)
}

func (k *Keeper) reconcileItem(ctx context.Context, vm lease.VM, byLaunch map[string]fleet.Instance, now time.Time, r *ReconcileReport) error {
	in, found := byLaunch[vm.LaunchID]
	alive := found && !in.State.Gone()
	if vm.State == lease.Launching {
		if now.Sub(vm.CreatedAt) <= k.grace() {
			return nil // a launch may be in flight
		}
		if alive {
			_, err := k.Books.MarkProvisioning(ctx, vm.Pool, vm.LaunchID, in.ID, in.Address, in.InstanceType)
			if err == nil {
				r.LaunchesAdopted++
			}
			return ignoreMoved(err)
		}
		err := k.Books.Remove(ctx, vm.Pool, vm.LaunchID, lease.Launching)
		if err == nil {
			r.GhostsRemoved++
		}
		return ignoreMoved(err)
	}
	if alive {
		if !vm.MissingSince.IsZero() {
			return k.Books.ClearMissing(ctx, vm.Pool, vm.LaunchID)
		}
		return nil
	}
	if vm.State == lease.Releasing && now.Sub(vm.StateAt) > k.grace() {
		// Its termination was under way a grace ago and the instance is gone:
		// a cleanup died between terminating and removing.
		err := k.Books.Remove(ctx, vm.Pool, vm.LaunchID, lease.Releasing)
		if err == nil {
			r.GhostsRemoved++
		}
		return ignoreMoved(err)
	}
	if vm.MissingSince.IsZero() {
		r.MarkedMissing++
		return ignoreMoved(k.Books.MarkMissing(ctx, vm.Pool, vm.LaunchID, now))
	}
	if now.Sub(vm.MissingSince) <= k.grace() {
		return nil
	}
	if vm.State != lease.Releasing {
		if _, err := k.Books.Retire(ctx, vm.Pool, vm.LaunchID, vm.State); err != nil {
			return ignoreMoved(err)
		}
	}
	if err := k.Books.Remove(ctx, vm.Pool, vm.LaunchID, lease.Releasing); err != nil {
		return ignoreMoved(err)
	}
	k.log().Warn("removed ghost", "pool", vm.Pool, "launch_id", vm.LaunchID, "instance_id", vm.InstanceID, "state", vm.State)
	r.GhostsRemoved++
	return nil
}
