package local_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sfn"
	sfntypes "github.com/aws/aws-sdk-go-v2/service/sfn/types"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/agent/agenttest"
	"github.com/slipway-ci/slipway/internal/awstest"
	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/internal/local"
	"github.com/slipway-ci/slipway/internal/pool"
	"github.com/slipway-ci/slipway/internal/stage"
)

// One runtime serves every end-to-end test of the package, as `slipway
// local` serves many delegates: each test has a pool of its own, so it
// judges only its pool, and stage ids of its own.
var shared struct {
	once    sync.Once
	rt      *local.Runtime
	err     error
	metrics *agenttest.Buffer
	logs    *agenttest.Buffer
	// faults are the functions to fail, by "function/stage id".
	faults sync.Map
	// answers keeps every body the API answered, to search for secrets.
	answers agenttest.Buffer
}

func TestMain(m *testing.M) {
	code := m.Run()
	for _, rt := range []*local.Runtime{shared.rt, benched.rt} {
		if rt == nil {
			continue
		}
		// Every write each function made, its role would be allowed on AWS.
		if refused := rt.Refusals(); len(refused) > 0 {
			fmt.Fprintf(os.Stderr, "writes outside the functions' partitions (deploy.Partitions):\n%s\n", strings.Join(refused, "\n"))
			code = 1
		}
		dir := rt.Dir
		rt.Close()
		// Ctrl-C and the tests' end alike: nothing the runtime started lives on.
		if left := agenttest.ProcessesUnder(dir); len(left) > 0 {
			fmt.Fprintf(os.Stderr, "processes left after Close: %v\n", left)
			code = 1
		}
	}
	os.Exit(code)
}

// testPools: one per test that judges its pool's depth.
var testPools = []pool.Pool{
	local.LocalPool("warm", 2, 4),
	local.LocalPool("cold", 0, 2),
	local.LocalPool("full", 0, 1),
	local.LocalPool("many", 5, 8),
	local.LocalPool("fail", 1, 3),
	local.LocalPool("time", 1, 3),
	local.LocalPool("cancel", 1, 3),
	local.LocalPool("kill", 1, 3),
	local.LocalPool("open", 1, 3),
	local.LocalPool("idle", 0, 2),
	local.LocalPool("dup", 1, 2),
	local.LocalPool("stop", 1, 2),
	local.LocalPool("fault", 1, 2),
	local.LocalPool("secret", 1, 2),
	local.LocalPool("metrics", 0, 1),
	local.LocalPool("misc", 1, 6),
	local.LocalPool("reports", 1, 2),
	tenantsPool,
}

// tenantsPool takes stages from the teams' roles only.
var tenantsPool = func() pool.Pool {
	p := local.LocalPool("tenants", 1, 2)
	p.Principals = []string{"arn:aws:iam::" + local.Account + ":role/team-*"}
	return p
}()

// runtime starts the shared runtime once, on DynamoDB Local and local-kms
// (awstest: without them the test fails in CI and is skipped elsewhere).
func runtime(t *testing.T) *local.Runtime {
	t.Helper()
	ddb, kms := awstest.DynamoDBEndpoint(t), awstest.KMSEndpoint(t)
	shared.once.Do(func() {
		shared.metrics, shared.logs = &agenttest.Buffer{}, &agenttest.Buffer{}
		shared.rt, shared.err = startRuntime(local.Options{
			DynamoDBEndpoint: ddb, KMSEndpoint: kms,
			Pools: testPools, Tick: time.Second, Metrics: shared.metrics, Logs: shared.logs,
			Settings: stage.Settings{
				AgentGrace: 2 * time.Second, AcquirePoll: time.Second, Operators: []string{"arn:aws:iam::" + local.Account + ":role/ops"},
				WatchGrace: 10 * time.Second,
			},
			Inject: func(function string, payload []byte) *local.Fault {
				var in struct {
					StageID string `json:"stage_id"`
				}
				_ = json.Unmarshal(payload, &in)
				if _, ok := shared.faults.LoadAndDelete(function + "/" + in.StageID); ok {
					return &local.Fault{Type: "FaultError", Message: "injected: the " + function + " function failed"}
				}
				return nil
			},
		})
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the runtime's log:\n%s", shared.logs.Bytes())
		}
	})
	return shared.rt
}

// startRuntime starts a runtime with a freshly built agent.
func startRuntime(o local.Options) (*local.Runtime, error) {
	root, err := local.RepoRoot(".")
	if err != nil {
		return nil, err
	}
	agent, err := buildAgent()
	if err != nil {
		return nil, err
	}
	o.Listen, o.AgentPath = "127.0.0.1:0", agent
	o.FromRepo(root)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return local.Start(ctx, o)
}

func buildAgent() (string, error) {
	dir, err := os.MkdirTemp("", "slipway-e2e-agent-")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "slipway-agent")
	cmd := exec.Command("go", "build", "-o", path, "github.com/slipway-ci/slipway/agent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build agent: %w\n%s", err, out)
	}
	return path, nil
}

// call sends one request to the delegate API and decodes the answer into
// out; it returns the status code.
func call(t *testing.T, rt *local.Runtime, method, path string, body, out any) int {
	t.Helper()
	return callAs(t, rt, "", method, path, body, out)
}

// callAs calls as caller (local.CallerHeader; none: the local role).
func callAs(t *testing.T, rt *local.Runtime, caller, method, path string, body, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, rt.APIURL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if caller != "" {
		req.Header.Set(local.CallerHeader, caller)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	_, _ = shared.answers.Write(data)
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: %d %s: %v", method, path, resp.StatusCode, data, err)
		}
	}
	return resp.StatusCode
}

func create(t *testing.T, rt *local.Runtime, spec stage.Spec) {
	t.Helper()
	var st stage.Status
	if code := call(t, rt, "POST", "/v1/stages", spec, &st); code != http.StatusCreated {
		t.Fatalf("create %s: %d %+v", spec.ID, code, st)
	}
}

func get(t *testing.T, rt *local.Runtime, id string) *stage.Status {
	t.Helper()
	var st stage.Status
	if code := call(t, rt, "GET", "/v1/stages/"+id, nil, &st); code != 200 {
		t.Fatalf("get stage %s: %d", id, code)
	}
	return &st
}

// released waits for the stage to be released and returns its status.
func released(t *testing.T, rt *local.Runtime, id string, within time.Duration) *stage.Status {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var st stage.Status
		if code := call(t, rt, "GET", "/v1/stages/"+id+"?wait=5s", nil, &st); code != 200 {
			t.Fatalf("get stage %s: %d", id, code)
		}
		if st.Phase == stage.PhaseReleased {
			return &st
		}
		if time.Now().After(deadline) {
			t.Fatalf("stage %s not released in %s: %+v", id, within, st)
		}
	}
}

var until = agenttest.Until

// warm waits until the pool has n idle VMs.
func warm(t testing.TB, rt *local.Runtime, name string, n int) {
	t.Helper()
	until(t, time.Minute, "pool "+name+" warm", func() bool {
		d, err := rt.Deployment.VMs.Depth(context.Background(), name)
		return err == nil && d.ByState[lease.Idle] >= n
	})
}

// settled checks what every test must leave: no lease held or being
// released in its pool, capacity equal to the VM items, an agent process
// for exactly the VMs that are not gone, and no process of its stages.
func settled(t *testing.T, rt *local.Runtime, name string, stages ...string) {
	t.Helper()
	// The pool's warm work (a refill that reserved capacity and is about to
	// write its VM item, a VM being replaced whose instance is gone and
	// whose item is about to go) settles within moments: every check must
	// hold at once, within a minute.
	var problems []string
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		problems = unsettled(t, rt, name, stages)
		if len(problems) == 0 || time.Now().After(deadline) {
			break
		}
	}
	for _, p := range problems {
		t.Error(p)
	}
}

// unsettled lists what is not yet as settled requires.
func unsettled(t *testing.T, rt *local.Runtime, name string, stages []string) []string {
	t.Helper()
	ctx := context.Background()
	d, err := rt.Deployment.VMs.Depth(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	var problems []string
	for _, state := range []lease.State{lease.Leased, lease.Releasing, lease.Launching} {
		if n := d.ByState[state]; n > 0 {
			problems = append(problems, fmt.Sprintf("pool %s: %d VMs %s", name, n, state))
		}
	}
	vms, err := rt.Deployment.VMs.List(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if capacity, err := rt.Deployment.VMs.Capacity(ctx, name); err != nil || capacity != len(vms) {
		problems = append(problems, fmt.Sprintf("pool %s: capacity %d, %d VM items (%v)", name, capacity, len(vms), err))
	}
	items := map[string]bool{}
	for _, vm := range vms {
		items[vm.LaunchID] = true
	}
	instances, err := rt.Fleet.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range instances {
		if in.Pool != name {
			continue
		}
		running := !in.State.Gone()
		if running != items[in.LaunchID] {
			problems = append(problems, fmt.Sprintf("pool %s: instance %s is %s, VM item: %v", name, in.LaunchID, in.State, items[in.LaunchID]))
		}
		if alive := len(agenttest.ProcessesUnder(filepath.Join(rt.Dir, "vms", in.LaunchID))) > 0; alive != running {
			problems = append(problems, fmt.Sprintf("pool %s: agent process of %s alive: %v, instance %s", name, in.LaunchID, alive, in.State))
		}
	}
	for _, id := range stages {
		if left := processesOfStage(id); len(left) > 0 {
			problems = append(problems, fmt.Sprintf("stage %s: processes left: %v", id, left))
		}
	}
	return problems
}

// processesOfStage lists the processes whose environment names the stage:
// the agent sets SLIPWAY_STAGE for every step.
func processesOfStage(id string) []string {
	var found []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		environ, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err == nil && slices.Contains(strings.Split(string(environ), "\x00"), "SLIPWAY_STAGE="+id) {
			cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
			found = append(found, e.Name()+": "+strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
	return found
}

func step(script string) agentapi.Step { return agentapi.Step{Script: script} }

func group(final bool, steps ...stage.Step) stage.Group {
	return stage.Group{Steps: steps, Final: final}
}

func s(id, script string) stage.Step { return stage.Step{ID: id, Step: step(script)} }

// executionARN is the ARN of the execution of stage id.
func executionARN(t testing.TB, rt *local.Runtime, id string) string {
	t.Helper()
	var arns []string
	for _, e := range executionsOf(t, rt, id) {
		arns = append(arns, aws.ToString(e.ExecutionArn))
	}
	if len(arns) != 1 {
		t.Fatalf("stage %s: executions %v, want one", id, arns)
	}
	return arns[0]
}

// executionsOf lists the executions of stage id: named by its id and when
// it was created (stage.ExecutionName).
func executionsOf(t testing.TB, rt *local.Runtime, id string) []sfntypes.ExecutionListItem {
	t.Helper()
	var of []sfntypes.ExecutionListItem
	p := sfn.NewListExecutionsPaginator(rt.StepFunctions, &sfn.ListExecutionsInput{StateMachineArn: aws.String(rt.StateMachineARN)})
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page.Executions {
			if name := aws.ToString(e.Name); len(name) == len(id)+10 && strings.HasPrefix(name, id+"_") {
				of = append(of, e)
			}
		}
	}
	return of
}

// history is the execution's Step Functions history.
func history(t testing.TB, rt *local.Runtime, id string) []string {
	t.Helper()
	arn := executionARN(t, rt, id)
	var types []string
	p := sfn.NewGetExecutionHistoryPaginator(rt.StepFunctions, &sfn.GetExecutionHistoryInput{ExecutionArn: aws.String(arn)})
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page.Events {
			types = append(types, string(e.Type))
		}
	}
	return types
}

// executionStatus is the execution's status once it has ended.
func executionStatus(t testing.TB, rt *local.Runtime, id string) string {
	t.Helper()
	return executionStatusWithin(t, rt, id, time.Minute)
}

// executionStatusWithin waits up to within for the execution to end.
func executionStatusWithin(t testing.TB, rt *local.Runtime, id string, within time.Duration) string {
	t.Helper()
	arn := executionARN(t, rt, id)
	var status string
	until(t, within, "execution "+id+" ended", func() bool {
		out, err := rt.StepFunctions.DescribeExecution(context.Background(), &sfn.DescribeExecutionInput{ExecutionArn: aws.String(arn)})
		if err != nil {
			t.Fatal(err)
		}
		status = string(out.Status)
		return status != "RUNNING"
	})
	return status
}

// archivedLog reads a released stage's step log whole, a chunk of 5 bytes
// at a time, so offsets are exercised too.
func archivedLog(t *testing.T, rt *local.Runtime, id, step string) string {
	t.Helper()
	var got []byte
	for offset := int64(0); ; {
		var chunk stage.LogChunk
		path := fmt.Sprintf("/v1/stages/%s/steps/%s/logs?offset=%d&limit=5", id, step, offset)
		if code := call(t, rt, "GET", path, nil, &chunk); code != http.StatusOK {
			t.Fatalf("GET %s: %d", path, code)
		}
		got = append(got, chunk.Data...)
		if chunk.Done {
			return string(got)
		}
		if chunk.NextOffset == offset {
			t.Fatalf("GET %s: no progress and not done", path)
		}
		offset = chunk.NextOffset
	}
}
