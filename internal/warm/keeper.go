// Package warm keeps the pools warm: refill launches VMs up to each pool's
// warm target and turns healthy ones idle, reap ends expired leases and
// retires old VMs, reconcile brings the books and the fleet back into
// agreement after crashes. Each is safe to run concurrently with itself and
// with leases and releases: every change goes through the lease store's
// conditional writes.
package warm

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/slipway-ci/slipway/agent/client"
	"github.com/slipway-ci/slipway/internal/fleet"
	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/internal/metrics"
	"github.com/slipway-ci/slipway/internal/pki"
	"github.com/slipway-ci/slipway/internal/pool"
)

// Books is the lease store as the keeper uses it; *lease.Store satisfies it.
type Books interface {
	List(ctx context.Context, pool string) ([]lease.VM, error)
	Get(ctx context.Context, pool, launchID string) (*lease.VM, error)
	Capacity(ctx context.Context, pool string) (int, error)
	RecordLaunch(ctx context.Context, l lease.Launch) (*lease.VM, error)
	MarkProvisioning(ctx context.Context, pool, launchID, instanceID, address, instanceType string) (*lease.VM, error)
	MarkIdle(ctx context.Context, pool, launchID string) (*lease.VM, error)
	Retire(ctx context.Context, pool, launchID string, from lease.State) (*lease.VM, error)
	ReleaseExpired(ctx context.Context, pool, launchID string) (*lease.VM, error)
	Remove(ctx context.Context, pool, launchID string, from lease.State) error
	MarkMissing(ctx context.Context, pool, launchID string, t time.Time) error
	ClearMissing(ctx context.Context, pool, launchID string) error
}

// Prober tells whether a VM's agent answers.
type Prober interface {
	// Probe returns nil when the VM's agent is healthy.
	Probe(ctx context.Context, vm lease.VM) error
}

// Keeper refills, reaps and reconciles the pools of one deployment.
type Keeper struct {
	Books   Books
	Fleet   fleet.Provider
	Pools   []pool.Pool
	CA      *pki.CA
	Prober  Prober
	Metrics *metrics.Emitter
	Logger  *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
	// AgentURL is where VMs download the agent ("" when the image has it).
	AgentURL string
	// Concurrency bounds the launches (and probes) in flight (default 32).
	Concurrency int
	// Grace is how long reconcile waits before it believes a missing instance,
	// an orphan or a stuck launch (default 10 minutes).
	Grace time.Duration
}

// DefaultGrace is reconcile's patience.
const DefaultGrace = 10 * time.Minute

// minReleaseGrace is the least time reap lets a release run before it
// finishes it itself, whatever the Grace: longer than the cleanup function
// may run (60 s), so a release still archiving logs from its agent never
// has its VM terminated under it.
const minReleaseGrace = 2 * time.Minute

func (k *Keeper) now() time.Time {
	if k.Now != nil {
		return k.Now()
	}
	return time.Now()
}

func (k *Keeper) grace() time.Duration {
	if k.Grace > 0 {
		return k.Grace
	}
	return DefaultGrace
}

func (k *Keeper) concurrency() int {
	if k.Concurrency > 0 {
		return k.Concurrency
	}
	return 32
}

func (k *Keeper) log() *slog.Logger {
	if k.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return k.Logger
}

// eventCounts are the metrics that count what a pass did. A pass that did
// none of it emits none of them: CloudWatch bills every metric that gets
// data in an hour, and an idle pool would pay for seven zeros a minute
// (DESIGN's alarms on them treat no data as nothing happened). The depth
// gauges go out on every pass: no data there means no refill.
var eventCounts = map[string]bool{
	metrics.VMsLaunched: true, metrics.LaunchFailures: true, metrics.BootFailures: true,
	metrics.LeasesExpired: true, metrics.VMsRetired: true, metrics.OrphansTerminated: true, metrics.GhostsRemoved: true,
}

func (k *Keeper) emit(p string, ms ...metrics.Metric) {
	if k.Metrics == nil {
		return
	}
	ms = slices.DeleteFunc(ms, func(m metrics.Metric) bool { return eventCounts[m.Name] && m.Value == 0 })
	if len(ms) == 0 {
		return
	}
	if err := k.Metrics.Pool(p, ms...); err != nil {
		k.log().Warn("emit metrics", "pool", p, "err", err)
	}
}

func count(name string, n int) metrics.Metric {
	return metrics.Metric{Name: name, Unit: metrics.Count, Value: float64(n)}
}

// eachPool runs one pass over every pool; a pool's failure does not stop the
// others.
func eachPool[R any](ctx context.Context, k *Keeper, pass string, f func(context.Context, *pool.Pool) (R, error)) ([]R, error) {
	var reports []R
	var errs []error
	for i := range k.Pools {
		r, err := f(ctx, &k.Pools[i])
		reports = append(reports, r)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s pool %s: %w", pass, k.Pools[i].Name, err))
		}
	}
	return reports, errors.Join(errs...)
}

// parallel runs f for each item with at most n at a time and joins errors.
func parallel[T any](n int, items []T, f func(T) error) error {
	var mu sync.Mutex
	var errs []error
	sem := make(chan struct{}, n)
	var wg sync.WaitGroup
	for _, it := range items {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := f(it); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// ignoreMoved drops the errors that mean another actor (a concurrent pass, a
// cleanup) changed the item first: its work is done.
func ignoreMoved(err error) error {
	if errors.Is(err, lease.ErrState) || errors.Is(err, lease.ErrNotFound) {
		return nil
	}
	return err
}

// finishRelease ends a releasing VM: its instance first, so that the
// capacity it frees is real, then the item.
func (k *Keeper) finishRelease(ctx context.Context, vm lease.VM) error {
	if vm.InstanceID != "" {
		if err := k.Fleet.Terminate(ctx, vm.InstanceID); err != nil {
			return fmt.Errorf("terminate vm %s: %w", vm.LaunchID, err)
		}
	}
	return k.Books.Remove(ctx, vm.Pool, vm.LaunchID, lease.Releasing)
}

// AgentProber probes agents over mTLS with the agent client.
type AgentProber struct {
	RootCAs     *x509.CertPool
	Certificate func() (*tls.Certificate, error)
	// Timeout bounds one probe (default 5 s).
	Timeout time.Duration
}

// Probe asks the VM's agent for its health.
func (p *AgentProber) Probe(ctx context.Context, vm lease.VM) error {
	if vm.Address == "" {
		return fmt.Errorf("probe vm %s: no address yet", vm.LaunchID)
	}
	c, err := client.New(client.Config{Addr: vm.Address, LaunchID: vm.LaunchID, RootCAs: p.RootCAs, Certificate: p.Certificate, Retries: -1})
	if err != nil {
		return err
	}
	defer c.Close()
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err = c.Health(ctx)
	return err
}
