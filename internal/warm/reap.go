package warm

import (
	"context"
	"sync/atomic"

	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/internal/metrics"
	"github.com/slipway-ci/slipway/internal/pool"
)

// ReapReport says what one reap did to one pool.
type ReapReport struct {
	Pool                      string
	LeasesExpired, VMsRetired int
	ReleasesFinished          int
}

// Reap enforces deadlines in every pool: leases past their deadline are
// released and their VMs terminated, idle VMs past the pool's max lifetime
// are retired (refill replaces them), and releases that a crashed cleanup
// left half done are finished.
func (k *Keeper) Reap(ctx context.Context) ([]ReapReport, error) {
	return eachPool(ctx, k, "reap", k.reapPool)
}

func (k *Keeper) reapPool(ctx context.Context, p *pool.Pool) (ReapReport, error) {
	r := ReapReport{Pool: p.Name}
	vms, err := k.Books.List(ctx, p.Name)
	if err != nil {
		return r, err
	}
	now := k.now()
	var expired, retired, finished atomic.Int64
	err = parallel(k.concurrency(), vms, func(vm lease.VM) error {
		var end *lease.VM
		var err error
		switch {
		case vm.State == lease.Leased && now.After(vm.LeaseDeadline):
			// The deadline is checked again in the condition.
			end, err = k.Books.ReleaseExpired(ctx, p.Name, vm.LaunchID)
			if err == nil {
				expired.Add(1)
			}
		case vm.State == lease.Idle && now.Sub(vm.CreatedAt) > p.MaxVMLifetime.Duration:
			end, err = k.Books.Retire(ctx, p.Name, vm.LaunchID, lease.Idle)
			if err == nil {
				retired.Add(1)
			}
		case vm.State == lease.Releasing && now.Sub(vm.StateAt) > max(k.grace(), minReleaseGrace):
			end = &vm
		default:
			return nil
		}
		if err != nil {
			return ignoreMoved(err)
		}
		if err := ignoreMoved(k.finishRelease(ctx, *end)); err != nil {
			return err
		}
		if vm.State == lease.Releasing {
			finished.Add(1)
		}
		return nil
	})
	r.LeasesExpired, r.VMsRetired, r.ReleasesFinished = int(expired.Load()), int(retired.Load()), int(finished.Load())
	k.emit(p.Name, count(metrics.LeasesExpired, r.LeasesExpired), count(metrics.VMsRetired, r.VMsRetired))
	if r.LeasesExpired+r.VMsRetired+r.ReleasesFinished > 0 {
		k.log().Info("reap", "pool", p.Name, "leases_expired", r.LeasesExpired, "vms_retired", r.VMsRetired, "releases_finished", r.ReleasesFinished)
	}
	return r, err
}
