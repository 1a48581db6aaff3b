package warm

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/slipway-ci/slipway/internal/fleet"
	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/internal/metrics"
	"github.com/slipway-ci/slipway/internal/pki"
	"github.com/slipway-ci/slipway/internal/pool"
)

// RefillReport says what one refill did to one pool.
type RefillReport struct {
	Pool                     string
	Target                   int
	Idle                     int // after the refill's probes
	BecameIdle, BootFailures int
	Launched, LaunchFailures int
	PoolFull                 bool
}

// Refill refills every pool: it probes the VMs that are booting (healthy
// ones become idle, those past the boot budget are terminated), then
// launches VMs until idle plus booting VMs reach the pool's warm target or
// its max.
func (k *Keeper) Refill(ctx context.Context) ([]RefillReport, error) {
	return eachPool(ctx, k, "refill", k.RefillPool)
}

// RefillPool refills one pool.
func (k *Keeper) RefillPool(ctx context.Context, p *pool.Pool) (RefillReport, error) {
	r := RefillReport{Pool: p.Name}
	if err := p.Check(); err != nil {
		return r, fmt.Errorf("nothing launched: %w", err)
	}
	r.Target = p.WarmTarget(k.now())
	vms, err := k.Books.List(ctx, p.Name)
	if err != nil {
		return r, err
	}
	states := map[lease.State]int{}
	var booting []lease.VM
	for _, vm := range vms {
		states[vm.State]++
		if vm.State == lease.Provisioning {
			booting = append(booting, vm)
		}
	}
	var becameIdle, bootFailures atomic.Int64
	probeErr := parallel(k.concurrency(), booting, func(vm lease.VM) error {
		idle, failed, err := k.probe(ctx, p, vm)
		if idle {
			becameIdle.Add(1)
		}
		if failed {
			bootFailures.Add(1)
		}
		return err
	})
	r.BecameIdle, r.BootFailures = int(becameIdle.Load()), int(bootFailures.Load())
	r.Idle = states[lease.Idle] + r.BecameIdle
	stillBooting := states[lease.Provisioning] - r.BecameIdle - r.BootFailures
	need := r.Target - r.Idle - stillBooting - states[lease.Launching]

	var launchErr error
	if need > 0 {
		r.Launched, r.LaunchFailures, r.PoolFull, launchErr = k.launch(ctx, p, need)
	}
	capacity, capErr := k.Books.Capacity(ctx, p.Name)
	k.emit(p.Name,
		count(metrics.IdleVMs, r.Idle),
		count(metrics.ProvisioningVMs, stillBooting+states[lease.Launching]+r.Launched),
		count(metrics.LeasedVMs, states[lease.Leased]),
		count(metrics.Capacity, capacity),
		count(metrics.IdleDeficit, r.Target-r.Idle),
		count(metrics.VMsLaunched, r.Launched),
		count(metrics.LaunchFailures, r.LaunchFailures),
		count(metrics.BootFailures, r.BootFailures),
	)
	k.log().Info("refill", "pool", p.Name, "target", r.Target, "idle", r.Idle, "launched", r.Launched,
		"launch_failures", r.LaunchFailures, "became_idle", r.BecameIdle, "boot_failures", r.BootFailures, "pool_full", r.PoolFull)
	return r, errors.Join(probeErr, launchErr, capErr)
}

// probe checks one booting VM: healthy → idle; silent past the boot budget →
// terminated and removed.
func (k *Keeper) probe(ctx context.Context, p *pool.Pool, vm lease.VM) (idle, failed bool, err error) {
	probeErr := k.Prober.Probe(ctx, vm)
	if probeErr == nil {
		if _, err := k.Books.MarkIdle(ctx, p.Name, vm.LaunchID); err != nil {
			return false, false, ignoreMoved(err) // another refill may have got there first
		}
		k.emit(p.Name, metrics.Metric{Name: metrics.BootSeconds, Unit: metrics.Seconds, Value: k.now().Sub(vm.CreatedAt).Seconds()})
		return true, false, nil
	}
	if k.now().Sub(vm.CreatedAt) <= p.BootBudget.Duration {
		return false, false, nil // still booting
	}
	retired, err := k.Books.Retire(ctx, p.Name, vm.LaunchID, lease.Provisioning)
	if err != nil {
		return false, false, ignoreMoved(err)
	}
	k.log().Warn("boot failed", "pool", p.Name, "launch_id", vm.LaunchID, "instance_id", vm.InstanceID, "err", probeErr)
	return false, true, ignoreMoved(k.finishRelease(ctx, *retired))
}

// launch starts up to n VMs, at most Concurrency at a time, and stops at the
// pool's max.
func (k *Keeper) launch(ctx context.Context, p *pool.Pool, n int) (launched, failures int, full bool, err error) {
	var mu sync.Mutex
	var errs []error
	sem := make(chan struct{}, k.concurrency())
	var wg sync.WaitGroup
	for range n {
		mu.Lock()
		stop := full
		mu.Unlock()
		if stop || ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			err := k.launchVM(ctx, p, lease.NewLaunchID())
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				launched++
			case errors.Is(err, lease.ErrPoolFull):
				full = true
			default:
				failures++
				errs = append(errs, err)
			}
		})
	}
	wg.Wait()
	return launched, failures, full, errors.Join(errs...)
}

// launchVM records a VM (reserving its capacity) before it asks the fleet
// for it, so that no instance ever exists without its item; a launch that
// fails returns the capacity.
func (k *Keeper) launchVM(ctx context.Context, p *pool.Pool, launchID string) error {
	if _, err := k.Books.RecordLaunch(ctx, lease.Launch{Pool: p.Name, LaunchID: launchID, Max: p.MaxInstances}); err != nil {
		return err
	}
	boot, err := k.boot(p, launchID)
	if err == nil {
		var inst *fleet.Instance
		if inst, err = k.Fleet.Launch(ctx, fleet.LaunchRequest{Pool: p, Boot: boot}); err == nil {
			_, err = k.Books.MarkProvisioning(ctx, p.Name, launchID, inst.ID, inst.Address, inst.InstanceType)
			return err // a failure here leaves a launching item with an instance: reconcile adopts it
		}
	}
	k.log().Warn("launch failed", "pool", p.Name, "launch_id", launchID, "err", err)
	if rmErr := k.Books.Remove(ctx, p.Name, launchID, lease.Launching); rmErr != nil {
		// Reconcile removes the stuck item after its grace.
		return errors.Join(err, rmErr)
	}
	return err
}

// boot issues the VM's certificate, valid for the pool's max VM lifetime.
func (k *Keeper) boot(p *pool.Pool, launchID string) (fleet.Boot, error) {
	key, err := pki.GenerateKey()
	if err != nil {
		return fleet.Boot{}, err
	}
	cert, err := k.CA.IssueServer(launchID, key.Public(), p.MaxVMLifetime.Duration+bootMargin, k.now())
	if err != nil {
		return fleet.Boot{}, err
	}
	keyPEM, err := pki.KeyPEM(key)
	if err != nil {
		return fleet.Boot{}, err
	}
	return fleet.Boot{
		LaunchID: launchID, CertPEM: pki.CertPEM(cert), KeyPEM: keyPEM, ClientCAPEM: pki.CertPEM(k.CA.Cert),
		AgentURL: k.AgentURL, Port: fleet.DefaultPort,
	}, nil
}

// bootMargin extends a VM certificate past the VM's max lifetime by its boot
// budget's worth at most: the lifetime counts from when the VM is idle.
const bootMargin = 20 * time.Minute
