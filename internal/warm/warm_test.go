package warm_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/internal/awstest"
	"github.com/slipway-ci/slipway/internal/fleet"
	"github.com/slipway-ci/slipway/internal/fleet/ec2fake"
	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/internal/metrics"
	"github.com/slipway-ci/slipway/internal/pki"
	"github.com/slipway-ci/slipway/internal/pool"
	"github.com/slipway-ci/slipway/internal/stage/record"
	"github.com/slipway-ci/slipway/internal/warm"
)

// clock is the test's time, shared by the store and the keeper.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// prober answers probes from a switch the test sets.
type prober struct {
	mu      sync.Mutex
	healthy bool
}

func (p *prober) Probe(context.Context, lease.VM) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.healthy {
		return errors.New("connection refused")
	}
	return nil
}

func (p *prober) set(healthy bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.healthy = healthy
}

type env struct {
	keeper  *warm.Keeper
	store   *lease.Store
	fake    *ec2fake.Server
	clock   *clock
	prober  *prober
	metrics *bytes.Buffer
}

// stages is the stage records of the env's table.
func (e *env) stages() *record.Store {
	return &record.Store{DB: e.store.DB, Table: e.store.Table, Now: e.store.Now}
}

// leaseStage creates a stage of pool and leases it a VM until deadline, as
// init does.
func (e *env) leaseStage(t testing.TB, pool, id string, deadline time.Time) (*lease.VM, error) {
	t.Helper()
	st, err := e.stages().CreateStage(t.Context(), record.NewStage{ID: id, Pool: pool, SpecHash: "h", Deadline: deadline})
	if err != nil {
		t.Fatal(err)
	}
	vm, _, err := e.stages().LeaseForStage(t.Context(), st, deadline)
	return vm, err
}

func testPool(name string, minIdle, maxInstances int) pool.Pool {
	return pool.Pool{
		Name: name, OS: "linux", Arch: "amd64",
		InstanceTypes: []string{"c6i.large"}, AMI: "ami-0123456789abcdef0",
		Subnets: []string{"subnet-0000000a", "subnet-0000000b"}, SecurityGroups: []string{"sg-00000001"},
		RootVolume: pool.Volume{SizeGB: 50, Type: "gp3"}, MinIdle: minIdle, MaxInstances: maxInstances,
		MaxVMLifetime: pool.Duration{Duration: 6 * time.Hour}, BootBudget: pool.Duration{Duration: 10 * time.Minute},
	}
}

func newEnv(t testing.TB, pools ...pool.Pool) *env {
	t.Helper()
	db, table := awstest.Table(t)
	clk := &clock{t: time.Now()}
	store := &lease.Store{DB: db, Table: table, Now: clk.Now}
	fake := ec2fake.New()
	t.Cleanup(func() {
		fake.Close()
		if p := fake.Problems(); len(p) > 0 {
			t.Errorf("the fake EC2 refused requests: %v", p)
		}
	})
	key, _ := pki.GenerateKey()
	ca, err := pki.NewCA(key, "test", 24*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	pr := &prober{healthy: true}
	k := &warm.Keeper{
		Books:   store,
		Fleet:   &fleet.EC2{EC2: fake.EC2Client(), Deployment: "test"},
		Pools:   pools,
		CA:      ca,
		Prober:  pr,
		Metrics: &metrics.Emitter{W: &lockedWriter{w: &buf}, Deployment: "test"},
		Now:     clk.Now,
	}
	return &env{keeper: k, store: store, fake: fake, clock: clk, prober: pr, metrics: &buf}
}

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// live returns the fake's instances that are not gone.
func (e *env) live() []ec2fake.Instance {
	var out []ec2fake.Instance
	for _, in := range e.fake.Instances() {
		if in.State != "terminated" && in.State != "shutting-down" {
			out = append(out, in)
		}
	}
	return out
}

// checkBooks asserts the invariants: every live instance has its item, every
// item past launching has a live instance, capacity counts the items.
func (e *env) checkBooks(t testing.TB, poolName string) {
	t.Helper()
	ctx := context.Background()
	vms, err := e.store.List(ctx, poolName)
	if err != nil {
		t.Fatal(err)
	}
	capacity, err := e.store.Capacity(ctx, poolName)
	if err != nil {
		t.Fatal(err)
	}
	items := map[string]lease.VM{}
	for _, vm := range vms {
		items[vm.LaunchID] = vm
	}
	live := map[string]bool{}
	for _, in := range e.live() {
		if in.Tags[fleet.TagPool] != poolName {
			continue
		}
		live[in.Tags[fleet.TagLaunchID]] = true
		if _, ok := items[in.Tags[fleet.TagLaunchID]]; !ok {
			t.Errorf("orphan: instance %s (%s) has no item", in.ID, in.Tags[fleet.TagLaunchID])
		}
	}
	for id, vm := range items {
		if vm.State != lease.Launching && !live[id] {
			t.Errorf("ghost: item %s (%s) has no live instance", id, vm.State)
		}
	}
	if capacity != len(vms) {
		t.Errorf("capacity %d, items %d", capacity, len(vms))
	}
}

func TestRefillLaunchesToTheTargetAndIdlesHealthyVMs(t *testing.T) {
	e := newEnv(t, testPool("p", 3, 5))
	ctx := context.Background()
	e.prober.set(false)
	r, err := e.keeper.Refill(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r[0].Launched != 3 || len(e.live()) != 3 {
		t.Fatalf("first refill %+v, %d instances", r[0], len(e.live()))
	}
	// Nothing to launch while they boot.
	if r, err = e.keeper.Refill(ctx); err != nil || r[0].Launched != 0 {
		t.Fatalf("second refill %+v %v", r, err)
	}
	e.prober.set(true)
	if r, err = e.keeper.Refill(ctx); err != nil || r[0].BecameIdle != 3 || r[0].Idle != 3 || r[0].Launched != 0 {
		t.Fatalf("third refill %+v %v", r, err)
	}
	e.checkBooks(t, "p")
	for _, in := range e.fake.Instances() {
		if !strings.Contains(string(in.UserData), in.Tags[fleet.TagLaunchID]) {
			t.Errorf("instance %s's user data is not its own", in.ID)
		}
	}
	for _, name := range []string{metrics.IdleVMs, metrics.IdleDeficit, metrics.VMsLaunched, metrics.BootSeconds, metrics.Capacity} {
		if !strings.Contains(e.metrics.String(), `"`+name+`"`) {
			t.Errorf("no %s metric emitted", name)
		}
	}
	e.checkMetrics(t)
}

// checkMetrics validates every line the keeper emitted against the EMF
// specification.
func (e *env) checkMetrics(t *testing.T) {
	t.Helper()
	for i, line := range strings.Split(strings.TrimSpace(e.metrics.String()), "\n") {
		if err := metrics.Validate([]byte(line)); err != nil {
			t.Errorf("metrics line %d: %v\n%s", i+1, err, line)
		}
	}
}

func TestBootFailuresAreTerminatedAndReplaced(t *testing.T) {
	e := newEnv(t, testPool("p", 2, 4))
	ctx := context.Background()
	e.prober.set(false)
	if _, err := e.keeper.Refill(ctx); err != nil {
		t.Fatal(err)
	}
	first := e.live()
	e.clock.Advance(11 * time.Minute) // past the boot budget
	r, err := e.keeper.Refill(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r[0].BootFailures != 2 || r[0].Launched != 2 {
		t.Fatalf("refill %+v", r[0])
	}
	for _, in := range first {
		for _, now := range e.fake.Instances() {
			if now.ID == in.ID && now.State != "shutting-down" {
				t.Errorf("failed VM %s is %s", in.ID, now.State)
			}
		}
	}
	e.checkBooks(t, "p")
}

func TestFailedLaunchesReturnCapacity(t *testing.T) {
	e := newEnv(t, testPool("p", 3, 5))
	e.fake.Fail = func(ec2fake.RunRequest) string { return "InsufficientInstanceCapacity" }
	r, err := e.keeper.Refill(context.Background())
	if !errors.Is(err, fleet.ErrNoCapacity) || r[0].LaunchFailures != 3 {
		t.Fatalf("refill %+v, err %v", r, err)
	}
	if c, _ := e.store.Capacity(context.Background(), "p"); c != 0 {
		t.Fatalf("capacity %d after failed launches", c)
	}
	e.checkBooks(t, "p")
}

// TestConcurrentRefillsHoldTheMax: 5 refills at once, 20 rounds, with leases
// and releases churning in between: the pool's max never exceeded, capacity
// equal to the live instances after each round.
func TestConcurrentRefillsHoldTheMax(t *testing.T) {
	const maxInstances = 6
	e := newEnv(t, testPool("p", maxInstances, maxInstances))
	ctx := context.Background()
	p := &e.keeper.Pools[0]
	for round := range 20 {
		var wg sync.WaitGroup
		for range 5 {
			wg.Go(func() {
				if _, err := e.keeper.RefillPool(ctx, p); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if n := len(e.live()); n > maxInstances {
			t.Fatalf("round %d: %d live instances, max %d", round, n, maxInstances)
		}
		e.checkBooks(t, "p")
		// Churn: two stages lease and end their VMs.
		for i := range 2 {
			vm, err := e.leaseStage(t, "p", fmt.Sprintf("r%d-%d", round, i), e.clock.Now().Add(time.Hour))
			if errors.Is(err, lease.ErrNoIdle) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, err := e.stages().ReleaseStage(ctx, vm.Stage, "passed", ""); err != nil {
				t.Fatal(err)
			}
			if err := e.keeper.Fleet.Terminate(ctx, vm.InstanceID); err != nil {
				t.Fatal(err)
			}
			if err := e.store.Remove(ctx, "p", vm.LaunchID, lease.Releasing); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestReap(t *testing.T) {
	e := newEnv(t, testPool("p", 3, 5))
	ctx := context.Background()
	for range 2 {
		if _, err := e.keeper.Refill(ctx); err != nil {
			t.Fatal(err)
		}
	}
	expiring, err := e.leaseStage(t, "p", "late-stage", e.clock.Now().Add(30*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	live, err := e.leaseStage(t, "p", "long-stage", e.clock.Now().Add(7*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Hour)
	r, err := e.keeper.Reap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r[0].LeasesExpired != 1 {
		t.Fatalf("reap %+v", r[0])
	}
	if _, err := e.store.Get(ctx, "p", expiring.LaunchID); !errors.Is(err, lease.ErrNotFound) {
		t.Fatalf("expired lease's vm: %v", err)
	}
	if vm, err := e.store.Get(ctx, "p", live.LaunchID); err != nil || vm.State != lease.Leased {
		t.Fatalf("live lease: %+v %v", vm, err)
	}
	// Past the max lifetime, the idle VM is retired; the leased one keeps its lease.
	e.clock.Advance(6 * time.Hour)
	if r, err = e.keeper.Reap(ctx); err != nil || r[0].VMsRetired != 1 {
		t.Fatalf("reap %+v %v", r, err)
	}
	e.checkBooks(t, "p")
}

func TestReconcileJudgesByStateAndAge(t *testing.T) {
	e := newEnv(t, testPool("p", 2, 5))
	ctx := context.Background()
	for range 2 {
		if _, err := e.keeper.Refill(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// An orphan: this deployment's instance, with no item.
	orphan := e.fake.AddInstance(ec2fake.Instance{Tags: map[string]string{
		fleet.TagDeployment: "test", fleet.TagPool: "p", fleet.TagLaunchID: lease.NewLaunchID(),
	}})
	// A ghost: EC2 ended one of the pool's instances.
	ghost := e.live()[0]
	e.fake.SetState(ghost.ID, "terminated")

	r, err := e.keeper.Reconcile(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r.OrphansTerminated != 0 || r.GhostsRemoved != 0 || r.MarkedMissing != 1 {
		t.Fatalf("first look acted: %+v", r)
	}
	e.clock.Advance(11 * time.Minute)
	if r, err = e.keeper.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if r.OrphansTerminated != 1 || r.GhostsRemoved != 1 {
		t.Fatalf("after the grace: %+v", r)
	}
	for _, name := range []string{metrics.OrphansTerminated, metrics.GhostsRemoved} {
		if !strings.Contains(e.metrics.String(), `"`+name+`":1`) {
			t.Errorf("no %s=1 emitted", name)
		}
	}
	e.checkMetrics(t)
	for _, in := range e.fake.Instances() {
		if in.ID == orphan && in.State != "shutting-down" {
			t.Errorf("orphan is %s", in.State)
		}
	}
	e.checkBooks(t, "p")
}

func TestReconcileForgetsAMissingMarkWhenTheInstanceReturns(t *testing.T) {
	e := newEnv(t, testPool("p", 1, 2))
	ctx := context.Background()
	if _, err := e.keeper.Refill(ctx); err != nil {
		t.Fatal(err)
	}
	in := e.live()[0]
	e.fake.SetState(in.ID, "terminated") // a stale look
	if _, err := e.keeper.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	e.fake.SetState(in.ID, "running")
	if _, err := e.keeper.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Hour)
	r, err := e.keeper.Reconcile(ctx)
	if err != nil || r.GhostsRemoved != 0 {
		t.Fatalf("removed a VM whose instance came back: %+v %v", r, err)
	}
	e.checkBooks(t, "p")
}

func TestBadPoolsLaunchNothing(t *testing.T) {
	bad := testPool("p", 2, 1) // min idle above max
	bad.Subnets = []string{"sn-1"}
	e := newEnv(t, bad)
	_, err := e.keeper.Refill(context.Background())
	for _, want := range []string{"nothing launched", "pool p: min_idle: 2", `pool p: subnets: "sn-1"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err %v does not say %q", err, want)
		}
	}
	if n := e.fake.Calls("RunInstances"); n != 0 {
		t.Fatalf("%d RunInstances calls for a bad pool", n)
	}
}

// An idle pool at its target pays CloudWatch for its five depth gauges, not
// for a zero of every event count.
func TestAnIdlePassEmitsOnlyTheDepth(t *testing.T) {
	e := newEnv(t, testPool("p", 2, 5))
	ctx := context.Background()
	for range 2 {
		if _, err := e.keeper.Handle(ctx, warm.Request{}); err != nil {
			t.Fatal(err)
		}
	}
	e.metrics.Reset()
	if _, err := e.keeper.Handle(ctx, warm.Request{}); err != nil {
		t.Fatal(err)
	}
	var names []string
	for line := range strings.Lines(strings.TrimSpace(e.metrics.String())) {
		var doc struct {
			AWS struct {
				CloudWatchMetrics []struct{ Metrics []struct{ Name string } }
			} `json:"_aws"`
		}
		if err := json.Unmarshal([]byte(line), &doc); err != nil {
			t.Fatal(err)
		}
		for _, d := range doc.AWS.CloudWatchMetrics {
			for _, m := range d.Metrics {
				names = append(names, m.Name)
			}
		}
	}
	slices.Sort(names)
	want := []string{metrics.Capacity, metrics.IdleDeficit, metrics.IdleVMs, metrics.LeasedVMs, metrics.ProvisioningVMs}
	if !slices.Equal(names, want) {
		t.Errorf("an idle pass emitted %v, want %v", names, want)
	}
	e.checkMetrics(t)
}
