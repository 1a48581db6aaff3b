package warm

import (
	"context"
	"fmt"

	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/internal/pool"
)

// What a stage asks of the keeper: a VM launched on demand when its pool has
// no idle one, a probe of that VM while it boots, and the end of the VM it
// released. Each goes through the same conditional writes as the passes.

// Launch records and launches one VM of the named pool, as refill does, and
// returns its launch id; lease.ErrPoolFull when the pool is at its max.
func (k *Keeper) Launch(ctx context.Context, poolName string) (string, error) {
	p, err := k.lookup(poolName)
	if err != nil {
		return "", err
	}
	if err := p.Check(); err != nil {
		return "", fmt.Errorf("nothing launched: %w", err)
	}
	launchID := lease.NewLaunchID()
	if err := k.launchVM(ctx, p, launchID); err != nil {
		return "", err
	}
	k.log().Info("launched on demand", "pool", p.Name, "launch_id", launchID)
	return launchID, nil
}

// ProbeBooting probes one booting VM: healthy, it becomes idle (true); past
// its boot budget, it is retired. A VM that is no longer booting is not
// probed (false, nil).
func (k *Keeper) ProbeBooting(ctx context.Context, poolName, launchID string) (bool, error) {
	p, err := k.lookup(poolName)
	if err != nil {
		return false, err
	}
	vm, err := k.Books.Get(ctx, p.Name, launchID)
	if err != nil {
		return false, ignoreMoved(err)
	}
	if vm.State != lease.Provisioning {
		return false, nil
	}
	idle, _, err := k.probe(ctx, p, *vm)
	return idle, err
}

// FinishRelease ends a releasing VM: its instance is terminated, then its item is
// removed and its capacity returned. A VM another caller finished already
// is no error.
func (k *Keeper) FinishRelease(ctx context.Context, vm lease.VM) error {
	return ignoreMoved(k.finishRelease(ctx, vm))
}

func (k *Keeper) lookup(name string) (*pool.Pool, error) {
	for i := range k.Pools {
		if k.Pools[i].Name == name {
			return &k.Pools[i], nil
		}
	}
	return nil, fmt.Errorf("no pool %q", name)
}
