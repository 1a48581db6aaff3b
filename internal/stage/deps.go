package stage

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/lambda"
	lambdatypes "github.com/aws/aws-sdk-go-v2/service/lambda/types"
	"github.com/aws/aws-sdk-go-v2/service/sfn"

	"github.com/slipway-ci/slipway/agent/client"
	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/internal/logarchive"
	"github.com/slipway-ci/slipway/internal/metrics"
	"github.com/slipway-ci/slipway/internal/pool"
	"github.com/slipway-ci/slipway/internal/secret"
	"github.com/slipway-ci/slipway/internal/stage/record"
	"github.com/slipway-ci/slipway/internal/warm"
)

// Executions starts state machine executions; *sfn.Client satisfies it.
type Executions interface {
	StartExecution(ctx context.Context, params *sfn.StartExecutionInput, optFns ...func(*sfn.Options)) (*sfn.StartExecutionOutput, error)
	DescribeExecution(ctx context.Context, params *sfn.DescribeExecutionInput, optFns ...func(*sfn.Options)) (*sfn.DescribeExecutionOutput, error)
}

// Invoker invokes Lambda functions; *lambda.Client satisfies it.
type Invoker interface {
	Invoke(ctx context.Context, params *lambda.InvokeInput, optFns ...func(*lambda.Options)) (*lambda.InvokeOutput, error)
}

// Settings tune the orchestration; zero values take the defaults noted.
type Settings struct {
	// Poll is how long RunGroup long-polls a group it starts (and waits for
	// the delegate's next group) before it returns (default 60 s): a group
	// of short steps costs one RunGroup.
	Poll time.Duration
	// Recheck is how long a RunGroup called again for a group still
	// running long-polls it (default 10 s): a long step then holds a
	// Lambda for a small share of its time.
	Recheck time.Duration
	// DelayShare and MaxDelay set the wait between two RunGroups while
	// steps run on: that share of the time the group has run (default
	// 0.1), at most MaxDelay (default 2 min). Long steps then cost a few
	// transitions a minute and hold no Lambda while they wait; a step's end
	// is noticed at most 10% of its time late.
	DelayShare float64
	MaxDelay   time.Duration
	// AcquirePoll is the wait between two leasing attempts while the pool
	// has no idle VM (default 2 s).
	AcquirePoll time.Duration
	// AgentGrace is how long an agent may not answer while its steps run
	// before they fail (default 30 s).
	AgentGrace time.Duration
	// DestroyTimeout bounds the agent's stage teardown at release (default
	// 10 s): the instance is terminated anyway.
	DestroyTimeout time.Duration
	// LeaseMargin extends a lease past its stage's deadline, so the stage's
	// own release comes before the reaper's (default 5 min).
	LeaseMargin time.Duration
	// MaxBadVMs is how many VMs whose agent never answered a stage gives up
	// on before it fails (default 3).
	MaxBadVMs int
	// Operators are the principals (patterns, * allowed) who see and act on
	// every stage: a platform team's role.
	Operators []string
	// MaxActiveStages is the most stages one principal may have created and
	// not yet released (default DefaultMaxActiveStages): one delegate cannot
	// hold every VM of a pool, or crowd the others out of the deployment.
	MaxActiveStages int
	// MaxStageTimeout and MaxIdleTimeout are the longest a stage may run and
	// wait for its next group (defaults MaxStageTimeout, DefaultMaxIdle): a
	// stage that waits holds its VM, and a platform team bounds how long.
	MaxStageTimeout, MaxIdleTimeout time.Duration
	// WatchGrace is how long a stage may look stuck (no execution, an
	// execution that ended, a result without a release) before the
	// Watchdog releases it (default 5 min).
	WatchGrace time.Duration
}

// DefaultMaxIdle is the longest a stage may wait for its next group unless
// the deployment says otherwise.
const DefaultMaxIdle = 2 * time.Hour

// DefaultMaxActiveStages is a principal's limit of active stages unless
// the deployment sets one.
const DefaultMaxActiveStages = 50

func (s Settings) withDefaults() Settings {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&s.Poll, 60*time.Second)
	def(&s.Recheck, 10*time.Second)
	def(&s.MaxDelay, 2*time.Minute)
	def(&s.AcquirePoll, 2*time.Second)
	def(&s.AgentGrace, 30*time.Second)
	def(&s.DestroyTimeout, 10*time.Second)
	def(&s.LeaseMargin, 5*time.Minute)
	if s.DelayShare <= 0 {
		s.DelayShare = 0.1
	}
	if s.MaxBadVMs <= 0 {
		s.MaxBadVMs = 3
	}
	def(&s.MaxStageTimeout, MaxStageTimeout)
	def(&s.MaxIdleTimeout, DefaultMaxIdle)
	def(&s.WatchGrace, 5*time.Minute)
	if s.MaxActiveStages <= 0 {
		s.MaxActiveStages = DefaultMaxActiveStages
	}
	return s
}

// Deps is a deployment's parts, as deploy.Build wires them. No handler
// holds it whole: each constructor (NewAPI, NewInit, NewRunGroup,
// NewCleanup, NewWatchdog) takes only what its handler calls, through
// interfaces declared where they are called, so that a handler's fields
// read like its function's IAM role.
type Deps struct {
	Stages *record.Store
	VMs    *lease.Store
	Keeper *warm.Keeper
	Pools  []pool.Pool
	Sealer *secret.Sealer
	Opener *secret.Opener
	Agents *Agents
	// Executions and StateMachineARN start a stage's execution (the API)
	// and read it (the watchdog).
	Executions      Executions
	StateMachineARN string
	// Invoker, CleanupFunction and RefillFunction run a release at once
	// (DELETE) and a refill after each release, asynchronously.
	Invoker         Invoker
	CleanupFunction string
	RefillFunction  string
	// Logs archives each step's log when it ends, for reading after the
	// VM is gone (required: deploy.Build refuses a deployment without).
	Logs     logarchive.Archive
	Metrics  *metrics.Emitter
	Logger   *slog.Logger
	Settings Settings
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// base is what every handler has: the pools, its log and metrics, the
// settings and the clock.
type base struct {
	Pools    []pool.Pool
	Metrics  *metrics.Emitter
	Logger   *slog.Logger
	Settings Settings
	Now      func() time.Time
}

func (d *Deps) base() base {
	return base{Pools: d.Pools, Metrics: d.Metrics, Logger: d.Logger, Settings: d.Settings, Now: d.Now}
}

func (d *base) now() time.Time {
	if d.Now != nil {
		return d.Now()
	}
	return time.Now()
}

func (d *base) log() *slog.Logger {
	if d.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return d.Logger
}

func (d *base) settings() Settings { return d.Settings.withDefaults() }

func (d *base) poolNames() []string {
	names := make([]string, len(d.Pools))
	for i, p := range d.Pools {
		names[i] = p.Name
	}
	return names
}

// pool is the pool named name, nil if none is.
func (d *base) pool(name string) *pool.Pool {
	for i := range d.Pools {
		if d.Pools[i].Name == name {
			return &d.Pools[i]
		}
	}
	return nil
}

func (d *base) emit(pool string, ms ...metrics.Metric) {
	if d.Metrics == nil {
		return
	}
	if err := d.Metrics.Pool(pool, ms...); err != nil {
		d.log().Warn("emit metrics", "pool", pool, "err", err)
	}
}

func (d *base) emitBy(pool, dim, value string, ms ...metrics.Metric) {
	if d.Metrics == nil {
		return
	}
	if err := d.Metrics.PoolBy(pool, dim, value, ms...); err != nil {
		d.log().Warn("emit metrics", "pool", pool, "err", err)
	}
}

// invokeAsync invokes function with input as its event, not waiting for
// it: the release after a cancel or a stuck stage, a refill after a
// release.
func invokeAsync(ctx context.Context, inv Invoker, function string, input any) error {
	payload, err := json.Marshal(input)
	if err != nil {
		return err
	}
	_, err = inv.Invoke(ctx, &lambda.InvokeInput{
		FunctionName: aws.String(function), InvocationType: lambdatypes.InvocationTypeEvent, Payload: payload,
	})
	if err != nil {
		return fmt.Errorf("invoke %s: %w", function, err)
	}
	return nil
}

// vmReader reads a VM's item: where its agent listens.
type vmReader interface {
	Get(ctx context.Context, pool, launchID string) (*lease.VM, error)
}

// reach is what reaches a bound stage's agent: its VM's item (for a stage
// bound before it recorded the address) and the agent clients.
type reach struct {
	VMs    vmReader
	Agents *Agents
}

func (d *Deps) reach() reach { return reach{VMs: d.VMs, Agents: d.Agents} }

// agentOf is the client of the stage's VM's agent while the stage holds it.
func (r *reach) agentOf(ctx context.Context, st *record.Stage) (*client.Client, error) {
	if st.VM == "" || st.BoundAt.IsZero() || !st.ReleasedAt.IsZero() {
		return nil, errors.New("no bound VM")
	}
	// The stage recorded where its VM's agent listens when it bound it; the
	// VM's item is read only for a stage bound before it did.
	if st.VMAddress != "" {
		return r.Agents.Client(&lease.VM{LaunchID: st.VM, Address: st.VMAddress})
	}
	vm, err := r.VMs.Get(ctx, st.Pool, st.VM)
	if err != nil {
		return nil, err
	}
	return r.Agents.Client(vm)
}

// Agents makes agent clients with the orchestrator's identity, one per VM,
// kept while in use so that calls share kept-alive connections.
type Agents struct {
	Roots       *x509.CertPool
	Certificate func() (*tls.Certificate, error)

	mu      sync.Mutex
	clients map[string]*client.Client // by launch id
}

// maxAgentClients bounds the clients kept; beyond it one is dropped.
const maxAgentClients = 256

// Client returns the client of the VM's agent.
func (a *Agents) Client(vm *lease.VM) (*client.Client, error) {
	if vm.Address == "" {
		return nil, fmt.Errorf("vm %s has no address", vm.LaunchID)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if c, ok := a.clients[vm.LaunchID]; ok {
		return c, nil
	}
	c, err := client.New(client.Config{Addr: vm.Address, LaunchID: vm.LaunchID, RootCAs: a.Roots, Certificate: a.Certificate})
	if err != nil {
		return nil, err
	}
	if a.clients == nil {
		a.clients = map[string]*client.Client{}
	}
	if len(a.clients) >= maxAgentClients {
		for id, old := range a.clients {
			old.Close()
			delete(a.clients, id)
			break
		}
	}
	a.clients[vm.LaunchID] = c
	return c, nil
}

// Forget drops the client of a VM that is gone.
func (a *Agents) Forget(launchID string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c, ok := a.clients[launchID]; ok {
		c.Close()
		delete(a.clients, launchID)
	}
}
