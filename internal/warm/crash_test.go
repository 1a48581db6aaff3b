package warm_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/slipway-ci/slipway/internal/ddb"
	"github.com/slipway-ci/slipway/internal/fleet"
	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/internal/warm"
)

var errCrash = errors.New("crashed")

// crasher counts a refill's external calls and dies at call number at:
// that call and every later one fail without being made.
type crasher struct {
	mu      sync.Mutex
	calls   int
	at      int
	crashed bool
}

func (c *crasher) call() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	if c.crashed || c.calls == c.at {
		c.crashed = true
		return errCrash
	}
	return nil
}

type crashDB struct {
	ddb.DB
	c *crasher
}

func (d crashDB) GetItem(ctx context.Context, in *dynamodb.GetItemInput, o ...func(*dynamodb.Options)) (*dynamodb.GetItemOutput, error) {
	if err := d.c.call(); err != nil {
		return nil, err
	}
	return d.DB.GetItem(ctx, in, o...)
}

func (d crashDB) UpdateItem(ctx context.Context, in *dynamodb.UpdateItemInput, o ...func(*dynamodb.Options)) (*dynamodb.UpdateItemOutput, error) {
	if err := d.c.call(); err != nil {
		return nil, err
	}
	return d.DB.UpdateItem(ctx, in, o...)
}

func (d crashDB) Query(ctx context.Context, in *dynamodb.QueryInput, o ...func(*dynamodb.Options)) (*dynamodb.QueryOutput, error) {
	if err := d.c.call(); err != nil {
		return nil, err
	}
	return d.DB.Query(ctx, in, o...)
}

func (d crashDB) TransactWriteItems(ctx context.Context, in *dynamodb.TransactWriteItemsInput, o ...func(*dynamodb.Options)) (*dynamodb.TransactWriteItemsOutput, error) {
	if err := d.c.call(); err != nil {
		return nil, err
	}
	return d.DB.TransactWriteItems(ctx, in, o...)
}

type crashEC2 struct {
	fleet.EC2API
	c *crasher
}

func (e crashEC2) RunInstances(ctx context.Context, in *ec2.RunInstancesInput, o ...func(*ec2.Options)) (*ec2.RunInstancesOutput, error) {
	if err := e.c.call(); err != nil {
		return nil, err
	}
	return e.EC2API.RunInstances(ctx, in, o...)
}

func (e crashEC2) TerminateInstances(ctx context.Context, in *ec2.TerminateInstancesInput, o ...func(*ec2.Options)) (*ec2.TerminateInstancesOutput, error) {
	if err := e.c.call(); err != nil {
		return nil, err
	}
	return e.EC2API.TerminateInstances(ctx, in, o...)
}

func (e crashEC2) DescribeImages(ctx context.Context, in *ec2.DescribeImagesInput, o ...func(*ec2.Options)) (*ec2.DescribeImagesOutput, error) {
	if err := e.c.call(); err != nil {
		return nil, err
	}
	return e.EC2API.DescribeImages(ctx, in, o...)
}

type crashProber struct {
	warm.Prober
	c *crasher
}

func (p crashProber) Probe(ctx context.Context, vm lease.VM) error {
	if err := p.c.call(); err != nil {
		return err
	}
	return p.Prober.Probe(ctx, vm)
}

// pickyProber fails the probes of one VM.
type pickyProber struct{ bad string }

func (p *pickyProber) Probe(_ context.Context, vm lease.VM) error {
	if vm.LaunchID == p.bad {
		return errors.New("connection refused")
	}
	return nil
}

// TestCrashAnywhereInRefill stops a refill between every two of its external
// calls (DynamoDB, EC2, probes), in turn; a later refill and reconcile then
// leave no orphan, no ghost, and capacity equal to the items. Two starting
// points: an empty pool, and a pool with one VM that boots well and one past
// its boot budget.
func TestCrashAnywhereInRefill(t *testing.T) {
	for _, booting := range []bool{false, true} {
		t.Run(map[bool]string{false: "empty pool", true: "booting vms"}[booting], func(t *testing.T) {
			crashEverywhere(t, booting)
		})
	}
}

func crashEverywhere(t *testing.T, booting bool) {
	e := newEnv(t, testPool("p", 2, 3))
	ctx := context.Background()
	healthy := e.keeper
	p := &healthy.Pools[0]
	picky := &pickyProber{}
	prepare := func() {
		if !booting {
			return
		}
		e.prober.set(false)
		if _, err := healthy.RefillPool(ctx, p); err != nil {
			t.Fatal(err)
		}
		e.prober.set(true)
		vms, err := e.store.List(ctx, "p")
		if err != nil || len(vms) != 2 {
			t.Fatalf("prepare: %d vms, %v", len(vms), err)
		}
		picky.bad = vms[1].LaunchID
		e.clock.Advance(p.BootBudget.Duration + time.Minute)
	}
	for at := 1; ; at++ {
		prepare()
		c := &crasher{at: at}
		store := &lease.Store{DB: crashDB{DB: e.store.DB, c: c}, Table: e.store.Table, Now: e.clock.Now}
		dying := *healthy
		dying.Books = store
		dying.Fleet = &fleet.EC2{EC2: crashEC2{EC2API: e.fake.EC2Client(), c: c}, Deployment: "test"}
		dying.Prober = crashProber{Prober: picky, c: c}
		dying.Concurrency = 1 // one order of calls, so every gap is visited
		_, err := dying.RefillPool(ctx, p)
		if !c.crashed {
			if err != nil {
				t.Fatalf("refill without a crash failed: %v", err)
			}
			t.Logf("crashed a refill at each of its %d external calls", at-1)
			if booting {
				e.checkBooks(t, "p")
			}
			break
		}
		if !errors.Is(err, errCrash) {
			t.Fatalf("crash at call %d: refill said %v", at, err)
		}
		// The next runs: the scheduled refill and, past the grace, reconcile.
		if _, err := healthy.RefillPool(ctx, p); err != nil {
			t.Fatalf("crash at call %d: refill after: %v", at, err)
		}
		e.clock.Advance(warm.DefaultGrace + time.Minute)
		if _, err := healthy.Reconcile(ctx); err != nil {
			t.Fatalf("crash at call %d: reconcile: %v", at, err)
		}
		if _, err := healthy.RefillPool(ctx, p); err != nil {
			t.Fatalf("crash at call %d: refill after reconcile: %v", at, err)
		}
		e.checkBooks(t, "p")
		if n := len(e.live()); n > p.MaxInstances {
			t.Fatalf("crash at call %d: %d live instances, max %d", at, n, p.MaxInstances)
		}
		if t.Failed() {
			t.Fatalf("crash at call %d broke the books", at)
		}
		// Start the next crash from an empty pool.
		e.emptyPool(t, "p")
	}
}

// emptyPool ends every VM of the pool.
func (e *env) emptyPool(t *testing.T, name string) {
	t.Helper()
	ctx := context.Background()
	vms, err := e.store.List(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range vms {
		if vm.State != lease.Releasing && vm.State != lease.Launching {
			if _, err := e.store.Retire(ctx, name, vm.LaunchID, vm.State); err != nil {
				t.Fatal(err)
			}
		}
		if vm.InstanceID != "" {
			if err := e.keeper.Fleet.Terminate(ctx, vm.InstanceID); err != nil {
				t.Fatal(err)
			}
		}
		from := lease.Releasing
		if vm.State == lease.Launching {
			from = lease.Launching
		}
		if err := e.store.Remove(ctx, name, vm.LaunchID, from); err != nil {
			t.Fatal(err)
		}
	}
	for _, in := range e.live() {
		if err := e.keeper.Fleet.Terminate(ctx, in.ID); err != nil {
			t.Fatal(err)
		}
	}
}
