package local_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sfn"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/agent/agenttest"
	"github.com/slipway-ci/slipway/internal/local"
	"github.com/slipway-ci/slipway/internal/local/localtest"
	"github.com/slipway-ci/slipway/internal/stage"
	"github.com/slipway-ci/slipway/internal/stage/record"
	"github.com/slipway-ci/slipway/statemachine"
)

func TestWarmHit(t *testing.T) {
	t.Parallel()
	rt := runtime(t)
	warm(t, rt, "warm", 2)
	create(t, rt, stage.Spec{
		ID: "warm-hit", Pool: "warm", Env: map[string]string{"GREETING": "hello"},
		Groups: []stage.Group{
			group(false, s("a", `echo "$GREETING from a"; echo "A=1" >> "$SLIPWAY_OUTPUT"`), s("b", "echo b")),
			group(true, s("c", `test -n "$SLIPWAY_WORKSPACE"`)),
		},
	})
	st := released(t, rt, "warm-hit", time.Minute)
	if st.Result != stage.Succeeded || len(st.Groups) != 2 || st.Groups[0].Steps[0].Outputs["A"] != "1" || st.Groups[1].State != stage.Succeeded {
		t.Fatalf("stage %+v", st)
	}
	tm := st.Timings
	if tm.LeasedAt == nil || tm.BoundAt == nil || tm.ReleasedAt == nil || st.Groups[0].StartedAt == nil || st.Groups[1].EndedAt == nil ||
		tm.BoundAt.Before(*tm.LeasedAt) || st.Groups[1].EndedAt.After(*tm.ReleasedAt) {
		t.Fatalf("phase timings %+v", tm)
	}
	if *tm.LeaseWaitMs > 1000 {
		t.Errorf("a warm hit waited %d ms for its VM", *tm.LeaseWaitMs)
	}
	if status := executionStatus(t, rt, "warm-hit"); status != "SUCCEEDED" {
		t.Fatalf("execution %s", status)
	}
	// The VM is gone; the logs are archived.
	if got := archivedLog(t, rt, "warm-hit", "a"); got != "hello from a\n" {
		t.Errorf("step a's log after the release: %q", got)
	}
	if got := archivedLog(t, rt, "warm-hit", "c"); got != "" {
		t.Errorf("step c's log after the release: %q", got)
	}
	settled(t, rt, "warm", "warm-hit")
}

func TestColdStart(t *testing.T) {
	t.Parallel()
	rt := runtime(t)
	create(t, rt, stage.Spec{ID: "cold-start", Pool: "cold", Groups: []stage.Group{group(true, s("a", "echo cold"))}})
	st := released(t, rt, "cold-start", time.Minute)
	if st.Result != stage.Succeeded {
		t.Fatalf("stage %+v", st)
	}
	settled(t, rt, "cold", "cold-start")
}

// TestPoolAtMax: a pool of one VM. The second stage waits for the first to
// release and then runs; a third, with a short acquire timeout, gives up.
func TestPoolAtMax(t *testing.T) {
	t.Parallel()
	rt := runtime(t)
	create(t, rt, stage.Spec{ID: "max-first", Pool: "full", Groups: []stage.Group{group(true, s("a", "sleep 4"))}})
	until(t, time.Minute, "the first stage running", func() bool { return get(t, rt, "max-first").Phase == stage.PhaseRunning })
	create(t, rt, stage.Spec{ID: "max-second", Pool: "full", Groups: []stage.Group{group(true, s("a", "echo second"))}})
	create(t, rt, stage.Spec{ID: "max-gives-up", Pool: "full", AcquireTimeoutSeconds: 1, Groups: []stage.Group{group(true, s("a", "true"))}})
	gaveUp := released(t, rt, "max-gives-up", time.Minute)
	if gaveUp.Result != stage.TimedOut || !strings.Contains(gaveUp.Reason, "no VM of pool full within the acquire timeout (1s)") || gaveUp.VM != "" {
		t.Fatalf("the stage that gave up: %+v", gaveUp)
	}
	first := released(t, rt, "max-first", time.Minute)
	second := released(t, rt, "max-second", time.Minute)
	if first.Result != stage.Succeeded || second.Result != stage.Succeeded {
		t.Fatalf("results %s, %s", first.Result, second.Result)
	}
	if second.Timings.LeasedAt.Before(*first.Timings.ReleasedAt) {
		t.Fatalf("the second stage leased at %s, before the first released at %s: two VMs in a pool of one", second.Timings.LeasedAt, first.Timings.ReleasedAt)
	}
	settled(t, rt, "full", "max-first", "max-second")
}

// TestFailingStepEndsAClosedStage: given all its groups, a stage ends at
// the first group with a failed step (its siblings finish first).
func TestFailingStepEndsAClosedStage(t *testing.T) {
	t.Parallel()
	rt := runtime(t)
	create(t, rt, stage.Spec{ID: "fails", Pool: "fail", Groups: []stage.Group{
		group(false, s("ok", "sleep 1; echo sibling"), s("bad", "exit 3")),
		group(true, s("never", "echo never")),
	}})
	st := released(t, rt, "fails", time.Minute)
	if st.Result != stage.Failed || !strings.Contains(st.Reason, "step bad failed (exit code 3)") {
		t.Fatalf("stage %+v", st)
	}
	g0, g1 := st.Groups[0], st.Groups[1]
	if g0.State != stage.Failed || g0.Steps[0].State != stage.Succeeded || *g0.Steps[1].ExitCode != 3 || g1.State != stage.StateSkipped || g1.Steps[0].State != stage.StateSkipped {
		t.Fatalf("groups %+v", st.Groups)
	}
	settled(t, rt, "fail", "fails")
}

// A background step runs beside the groups after its own, which does not
// wait for it, and ends with the stage; its state says it was left running.
func TestBackgroundStep(t *testing.T) {
	t.Parallel()
	rt := runtime(t)
	pidFile := filepath.Join(t.TempDir(), "pid")
	server := s("server", `echo $$ > "$PID_FILE"; echo up > marker; exec sleep 300`)
	server.Background = true
	server.Env = map[string]string{"PID_FILE": pidFile}
	create(t, rt, stage.Spec{ID: "background", Pool: "misc", Groups: []stage.Group{
		group(false, server),
		group(true, s("client", `for i in $(seq 100); do [ -s marker ] && break; sleep 0.05; done; cat marker`)),
	}})
	st := released(t, rt, "background", time.Minute)
	if st.Result != stage.Succeeded || st.Groups[0].State != stage.Succeeded || st.Groups[0].Steps[0].State != stage.StateBackground || !st.Groups[0].Steps[0].Background ||
		st.Groups[1].Steps[0].State != stage.Succeeded {
		t.Fatalf("stage %+v", st)
	}
	if got := archivedLog(t, rt, "background", "client"); got != "up\n" {
		t.Errorf("the client step saw %q", got)
	}
	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	if pid <= 0 || syscall.Kill(pid, 0) == nil {
		t.Errorf("the background step (pid %d) outlived its stage", pid)
	}
	settled(t, rt, "misc", "background")
}

func TestStepTimeout(t *testing.T) {
	t.Parallel()
	rt := runtime(t)
	slow := s("slow", "sleep 60")
	slow.TimeoutSeconds = 1
	create(t, rt, stage.Spec{ID: "step-timeout", Pool: "time", Groups: []stage.Group{group(true, slow)}})
	st := released(t, rt, "step-timeout", time.Minute)
	if st.Result != stage.Failed || st.Groups[0].Steps[0].State != "timed_out" || !strings.Contains(st.Reason, "step slow timed_out") {
		t.Fatalf("stage %+v", st)
	}
	settled(t, rt, "time", "step-timeout")
}

func TestStageDeadline(t *testing.T) {
	t.Parallel()
	rt := runtime(t)
	create(t, rt, stage.Spec{ID: "deadline", Pool: "time", TimeoutSeconds: 3, Groups: []stage.Group{group(true, s("long", "sleep 60"))}})
	st := released(t, rt, "deadline", time.Minute)
	if st.Result != stage.TimedOut || !strings.Contains(st.Reason, "timeout (3s)") || st.Groups[0].Steps[0].State != "canceled" {
		t.Fatalf("stage %+v", st)
	}
	if late := st.Timings.ReleasedAt.Sub(st.Deadline); late > 20*time.Second {
		t.Errorf("released %s after its deadline", late)
	}
	settled(t, rt, "time", "deadline")
}

// TestCancelMidStep: DELETE ends the stage at once, whatever its execution
// waits for, and the execution still succeeds: the stage ran and was
// released.
func TestCancelMidStep(t *testing.T) {
	t.Parallel()
	rt := runtime(t)
	create(t, rt, stage.Spec{ID: "cancel-me", Pool: "cancel", Groups: []stage.Group{group(true, s("long", "echo started; sleep 300"))}})
	// The step's first line, not only the stage's phase: the API binds a
	// warm VM at create, before the state machine starts the step.
	until(t, time.Minute, "the step running", func() bool {
		var chunk stage.LogChunk
		return call(t, rt, "GET", "/v1/stages/cancel-me/steps/long/logs?offset=0", nil, &chunk) == http.StatusOK &&
			string(chunk.Data) == "started\n"
	})
	start := time.Now()
	var st stage.Status
	if code := call(t, rt, "DELETE", "/v1/stages/cancel-me", nil, &st); code != http.StatusAccepted {
		t.Fatalf("DELETE: %d", code)
	}
	final := released(t, rt, "cancel-me", time.Minute)
	if final.Result != stage.Canceled || time.Since(start) > 15*time.Second {
		t.Fatalf("stage %+v after %s", final, time.Since(start))
	}
	if status := executionStatus(t, rt, "cancel-me"); status != "SUCCEEDED" {
		t.Fatalf("execution %s", status)
	}
	if got := archivedLog(t, rt, "cancel-me", "long"); got != "started\n" {
		t.Errorf("the canceled step's log after the release: %q", got)
	}
	settled(t, rt, "cancel", "cancel-me")
}

// TestAgentKilledMidStep: the VM's agent dies; the step fails with a clear
// reason after the agent grace, and the VM is released.
func TestAgentKilledMidStep(t *testing.T) {
	t.Parallel()
	rt := runtime(t)
	create(t, rt, stage.Spec{ID: "agent-dies", Pool: "kill", Groups: []stage.Group{group(true, s("long", "sleep 300"))}})
	var vm string
	until(t, time.Minute, "the step running", func() bool {
		st := get(t, rt, "agent-dies")
		vm = st.VM
		return st.Phase == stage.PhaseRunning && len(processesOfStage("agent-dies")) > 0
	})
	agents := agenttest.ProcessesUnder(filepath.Join(rt.Dir, "vms", vm))
	if len(agents) != 1 {
		t.Fatalf("agent processes of %s: %v", vm, agents)
	}
	pid, _ := strconv.Atoi(strings.SplitN(agents[0], ":", 2)[0])
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	st := released(t, rt, "agent-dies", time.Minute)
	if st.Result != stage.Errored || st.Groups[0].Steps[0].State != "error" || !strings.Contains(st.Groups[0].Steps[0].Error, "the agent did not answer for 2s") {
		t.Fatalf("stage %+v", st)
	}
	// The step's own process died with its agent's kill? Not necessarily:
	// SIGKILL of the agent leaves its step running on a real VM, which is
	// terminated; here the "VM" is a process, so end what it left.
	for _, p := range processesOfStage("agent-dies") {
		pid, _ := strconv.Atoi(strings.SplitN(p, ":", 2)[0])
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	settled(t, rt, "kill", "agent-dies")
}

// TestGroupsOneAtATime: the delegate adds groups as it goes (as Harness's
// does, a step at a time); a failed group does not end an open stage, the
// final group does, and the stage's result counts every group.
func TestGroupsOneAtATime(t *testing.T) {
	t.Parallel()
	rt := runtime(t)
	create(t, rt, stage.Spec{ID: "open-stage", Pool: "open"})
	add := func(g stage.Group) {
		var st stage.Status
		if code := call(t, rt, "POST", "/v1/stages/open-stage/groups", g, &st); code != http.StatusCreated {
			t.Fatalf("add group: %d %+v", code, st)
		}
	}
	waitStep := func(id string) stage.StepStatus {
		var ss stage.StepStatus
		until(t, time.Minute, "step "+id+" ended", func() bool {
			call(t, rt, "GET", "/v1/stages/open-stage/steps/"+id+"?wait=5s", nil, &ss)
			return ss.State != stage.StatePending && ss.State != stage.StateRunning
		})
		return ss
	}
	add(group(false, s("one", `echo "N=1" >> "$SLIPWAY_OUTPUT"`)))
	if ss := waitStep("one"); ss.State != stage.Succeeded || ss.Outputs["N"] != "1" {
		t.Fatalf("step one %+v", ss)
	}
	add(group(false, s("two", "exit 1")))
	if ss := waitStep("two"); ss.State != stage.Failed {
		t.Fatalf("step two %+v", ss)
	}
	// The delegate decides what follows a failure: here, one more group.
	add(group(true, s("three", "echo last")))
	st := released(t, rt, "open-stage", time.Minute)
	if st.Result != stage.Failed || !strings.Contains(st.Reason, "step two failed") || len(st.Groups) != 3 || st.Groups[2].Steps[0].State != stage.Succeeded {
		t.Fatalf("stage %+v", st)
	}
	settled(t, rt, "open", "open-stage")
}

// TestIdleTimeout: a delegate that goes silent gets its stage released
// after the idle timeout.
func TestIdleTimeout(t *testing.T) {
	t.Parallel()
	rt := runtime(t)
	create(t, rt, stage.Spec{ID: "silent", Pool: "idle", IdleTimeoutSeconds: 10, Groups: []stage.Group{group(false, s("only", "true"))}})
	st := released(t, rt, "silent", time.Minute)
	if st.Result != stage.TimedOut || !strings.Contains(st.Reason, "idle timeout (10s)") || st.Groups[0].Steps[0].State != stage.Succeeded {
		t.Fatalf("stage %+v", st)
	}
	if idle := st.Timings.EndedAt.Sub(*st.Groups[0].EndedAt); idle < 10*time.Second || idle > 15*time.Second {
		t.Errorf("ended %s after its last group", idle)
	}
	settled(t, rt, "idle", "silent")
}

// TestDuplicateCreate: the same create, many times at once (retries), is one
// stage and one execution.
func TestDuplicateCreate(t *testing.T) {
	t.Parallel()
	rt := runtime(t)
	spec := stage.Spec{ID: "twice", Pool: "dup", Groups: []stage.Group{group(true, s("a", "echo once >> once.txt; test $(wc -l < once.txt) -eq 1"))}}
	codes := make([]int, 5)
	var wg sync.WaitGroup
	for i := range codes {
		wg.Go(func() { codes[i] = call(t, rt, "POST", "/v1/stages", spec, nil) })
	}
	wg.Wait()
	slices.Sort(codes)
	if codes[0] != http.StatusOK && codes[0] != http.StatusCreated || codes[4] != http.StatusCreated && codes[4] != http.StatusOK {
		t.Fatalf("answers %v", codes)
	}
	st := released(t, rt, "twice", time.Minute)
	if st.Result != stage.Succeeded {
		t.Fatalf("stage %+v", st)
	}
	if n := len(executionsOf(t, rt, "twice")); n != 1 {
		t.Fatalf("%d executions of stage twice", n)
	}
	spec.Env = map[string]string{"OTHER": "body"}
	if code := call(t, rt, "POST", "/v1/stages", spec, nil); code != http.StatusConflict {
		t.Fatalf("another body: %d", code)
	}
	settled(t, rt, "dup", "twice")
}

// TestStopExecution: an execution stopped mid-step never reaches its Cleanup
// state; the execution-status event (the shim's, as EventBridge's on AWS)
// releases the stage.
func TestStopExecution(t *testing.T) {
	t.Parallel()
	rt := runtime(t)
	create(t, rt, stage.Spec{ID: "stopped", Pool: "stop", Groups: []stage.Group{group(true, s("long", "sleep 300"))}})
	until(t, time.Minute, "the step running", func() bool { return len(processesOfStage("stopped")) > 0 })
	arn := executionARN(t, rt, "stopped")
	if _, err := rt.StepFunctions.StopExecution(context.Background(), &sfn.StopExecutionInput{ExecutionArn: aws.String(arn)}); err != nil {
		t.Fatal(err)
	}
	st := released(t, rt, "stopped", time.Minute)
	if st.Result != stage.Canceled || !strings.Contains(st.Reason, "execution was stopped") {
		t.Fatalf("stage %+v", st)
	}
	if status := executionStatus(t, rt, "stopped"); status != "ABORTED" {
		t.Fatalf("execution %s", status)
	}
	// RunGroup was in flight when the execution stopped: it ends on its own.
	settled(t, rt, "stop", "stopped")
}

// TestFunctionError: the step function fails (on the Lambda endpoint, as
// Lambda reports it); the Catch sends the execution to Cleanup.
func TestFunctionError(t *testing.T) {
	t.Parallel()
	rt := runtime(t)
	shared.faults.Store(statemachine.RunGroup+"/faulty", true)
	create(t, rt, stage.Spec{ID: "faulty", Pool: "fault", Groups: []stage.Group{group(true, s("a", "true"))}})
	st := released(t, rt, "faulty", time.Minute)
	if st.Result != stage.Errored || !strings.Contains(st.Reason, "a task failed: FaultError") || !strings.Contains(st.Reason, "injected") {
		t.Fatalf("stage %+v", st)
	}
	types := history(t, rt, "faulty")
	if !slices.Contains(types, "LambdaFunctionFailed") || executionStatus(t, rt, "faulty") != "SUCCEEDED" {
		t.Fatalf("history %v", types)
	}
	settled(t, rt, "fault", "faulty")
}

// Test20Stages: 20 stages at once on a pool of min 5, max 8: all finish,
// never two on one VM, all released, the pool warm again.
func Test20Stages(t *testing.T) {
	t.Parallel()
	rt := runtime(t)
	warm(t, rt, "many", 5)
	var ids []string
	for i := range 20 {
		id := fmt.Sprintf("many-%02d", i)
		ids = append(ids, id)
		create(t, rt, stage.Spec{ID: id, Pool: "many", Groups: []stage.Group{group(true, s("work", "sleep 1; echo $SLIPWAY_STAGE > stage.txt; sleep 1; test $(cat stage.txt) = $SLIPWAY_STAGE"))}})
	}
	vms := map[string]string{}
	for _, id := range ids {
		st := released(t, rt, id, 3*time.Minute)
		if st.Result != stage.Succeeded {
			t.Errorf("stage %s: %s %s", id, st.Result, st.Reason)
		}
		if other, dup := vms[st.VM]; dup {
			t.Errorf("stages %s and %s on one VM %s", other, id, st.VM)
		}
		vms[st.VM] = id
	}
	settled(t, rt, "many", ids...)
	warm(t, rt, "many", 5)
	d, _ := rt.Deployment.VMs.Depth(context.Background(), "many")
	if d.Capacity > 8 {
		t.Fatalf("capacity %d over the max", d.Capacity)
	}
}

// TestSecretsNeverInPlaintext: after stages that use stage and step secrets
// (and print them), no secret is in plain text (or base64) in the
// execution histories, any DynamoDB item, the functions' logs, the metrics
// or an API answer; the secrets are deleted at release.
func TestSecretsNeverInPlaintext(t *testing.T) {
	rt := runtime(t)
	stageSecret, stepSecret := "s3cr3t-stage-value-0001", "s3cr3t-step-value-0002"
	withSecret := s("uses", `echo "stage $STAGE_TOKEN step $STEP_TOKEN"; echo "OUT=$STEP_TOKEN" >> "$SLIPWAY_OUTPUT"`)
	withSecret.Secrets = map[string]string{"STEP_TOKEN": stepSecret}
	create(t, rt, stage.Spec{
		ID: "secretive", Pool: "secret", Secrets: map[string]string{"STAGE_TOKEN": stageSecret},
		Groups: []stage.Group{group(true, withSecret)},
	})
	st := released(t, rt, "secretive", time.Minute)
	if st.Result != stage.Succeeded || st.Groups[0].Steps[0].Outputs["OUT"] != "******" {
		t.Fatalf("stage %+v", st)
	}
	var chunk stage.LogChunk
	call(t, rt, "GET", "/v1/stages/secretive/steps/uses/logs", nil, &chunk)

	ctx := context.Background()
	places := map[string][]byte{
		"API answers": shared.answers.Bytes(), "logs": shared.logs.Bytes(), "metrics": shared.metrics.Bytes(),
	}
	var histories []byte
	out, err := rt.StepFunctions.ListExecutions(ctx, &sfn.ListExecutionsInput{StateMachineArn: aws.String(rt.StateMachineARN)})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range out.Executions {
		h, err := rt.StepFunctions.GetExecutionHistory(ctx, &sfn.GetExecutionHistoryInput{ExecutionArn: e.ExecutionArn})
		if err != nil {
			t.Fatal(err)
		}
		data, _ := json.Marshal(h.Events)
		histories = append(histories, data...)
		d, err := rt.StepFunctions.DescribeExecution(ctx, &sfn.DescribeExecutionInput{ExecutionArn: e.ExecutionArn})
		if err != nil {
			t.Fatal(err)
		}
		histories = append(histories, aws.ToString(d.Input)+aws.ToString(d.Output)+aws.ToString(d.Cause)...)
	}
	if !strings.Contains(string(histories), `secretive`) {
		t.Fatal("the histories do not hold the stage's execution")
	}
	places["execution histories"] = histories
	places["DynamoDB items"] = localtest.ScanTable(t, rt)
	for _, secret := range []string{stageSecret, stepSecret} {
		for where, data := range places {
			for _, form := range localtest.Encodings(secret) {
				if strings.Contains(string(data), form) {
					t.Errorf("the secret %q is in the %s as %q", secret, where, form)
				}
			}
		}
	}
	// Sealed, then gone at the release.
	r, err := rt.Deployment.Stages.StageRecords(ctx, "secretive")
	if err != nil {
		t.Fatal(err)
	}
	if r.Stage.Sealed != nil || r.Groups[0].Sealed != nil {
		t.Fatal("sealed secrets kept after the release")
	}
	settled(t, rt, "secret", "secretive")
}

// TestMetricsOfStages: the functions' EMF lines after a cold start and a
// warm hit, checked by name, unit and dimensions against the EMF
// specification and the metric contract (DESIGN section 7).
func TestMetricsOfStages(t *testing.T) {
	rt := runtime(t)
	create(t, rt, stage.Spec{ID: "metrics-cold", Pool: "metrics", Groups: []stage.Group{group(true, s("a", "true"))}})
	if st := released(t, rt, "metrics-cold", time.Minute); st.Result != stage.Succeeded {
		t.Fatalf("stage %+v", st)
	}
	warm(t, rt, "misc", 1)
	create(t, rt, stage.Spec{ID: "metrics-warm", Pool: "misc", Groups: []stage.Group{group(true, s("a", "exit 1"))}})
	if st := released(t, rt, "metrics-warm", time.Minute); st.Result != stage.Failed {
		t.Fatalf("stage %+v", st)
	}
	// The release emits StageSeconds after the stage reads as released.
	until(t, 10*time.Second, "StageSeconds of both stages", func() bool {
		n := 0
		for line := range bytes.Lines(shared.metrics.Bytes()) {
			if bytes.Contains(line, []byte(`"StageSeconds"`)) &&
				(bytes.Contains(line, []byte(`"Pool":"metrics"`)) || bytes.Contains(line, []byte(`"Pool":"misc"`))) {
				n++
			}
		}
		return n >= 2
	})
	checkMetrics(t, shared.metrics.Bytes(), map[string]string{"metrics-cold": "metrics", "metrics-warm": "misc"})
	settled(t, rt, "metrics", "metrics-cold")
	settled(t, rt, "misc", "metrics-warm")
}

// TestReports: a step's JUnit and TRX reports reach the stage's status,
// masked, after the release too.
func TestReports(t *testing.T) {
	t.Parallel()
	rt := runtime(t)
	junit, err := os.ReadFile("../../agent/reports/testdata/ws/target/surefire-reports/TEST-com.example.CalculatorTest.xml")
	if err != nil {
		t.Fatal(err)
	}
	trx, err := os.ReadFile("../../agent/reports/testdata/ws/TestResults/run.trx")
	if err != nil {
		t.Fatal(err)
	}
	tests := s("tests", `mkdir -p out && cp reports/TEST-calc.xml out/ && cp reports/run.trx out/ && exit 1`)
	tests.Reports = []string{"out/TEST-*.xml", "out/*.trx"}
	create(t, rt, stage.Spec{
		ID: "with-reports", Pool: "reports", Secrets: map[string]string{"TOKEN": "s3cr3t-report-token"},
		Files:  []agentapi.File{{Path: "reports/TEST-calc.xml", Data: junit}, {Path: "reports/run.trx", Data: trx}},
		Groups: []stage.Group{group(true, tests)},
	})
	st := released(t, rt, "with-reports", time.Minute)
	r := st.Groups[0].Steps[0].Tests
	if st.Result != stage.Failed || r == nil || r.Files != 2 || r.Tests != 6 || r.Failed != 2 || r.Skipped != 2 || len(r.Failures) != 2 {
		t.Fatalf("stage %+v, tests %+v", st, r)
	}
	for _, f := range r.Failures {
		if strings.Contains(f.Output, "s3cr3t") {
			t.Errorf("a secret in a failure's output: %+v", f)
		}
	}
	settled(t, rt, "reports", "with-reports")
}

// A deployment that cannot start says why and stops what it started, even
// when it fails before the state machine's engine runs.
func TestStartFailsCleanly(t *testing.T) {
	root, err := local.RepoRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	o := local.Options{Listen: "127.0.0.1:0", AgentPath: "/nonexistent/agent", DynamoDBEndpoint: "http://127.0.0.1:1", KMSEndpoint: "http://127.0.0.1:1"}
	o.FromRepo(root)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rt, err := local.Start(ctx, o)
	if err == nil || rt != nil {
		t.Fatalf("started on endpoints nothing listens on: %v", err)
	}
}

// TestTenants: a stage is its creator's. Another team cannot read it, its
// steps or logs, cancel it or its steps, or extend it with a group that
// would get its secrets; to the other team it does not exist, while it runs
// on untouched. A pool that names its principals takes no one else's
// stages.
func TestTenants(t *testing.T) {
	t.Parallel()
	rt := runtime(t)
	const a, b = "team-a", "team-b"
	spec := stage.Spec{ID: "tenant-a", Pool: "tenants", Secrets: map[string]string{"TOKEN": "team-a-s3cret"},
		Groups: []stage.Group{group(false, s("long", "echo started; sleep 2; echo done"))}}
	var st stage.Status
	if code := callAs(t, rt, a, "POST", "/v1/stages", spec, &st); code != http.StatusCreated {
		t.Fatalf("a creates: %d %+v", code, st)
	}
	until(t, time.Minute, "a's step running", func() bool {
		var chunk stage.LogChunk
		return callAs(t, rt, a, "GET", "/v1/stages/tenant-a/steps/long/logs?offset=0", nil, &chunk) == http.StatusOK &&
			string(chunk.Data) == "started\n"
	})
	steal := group(true, s("steal", "echo $TOKEN"))
	for _, c := range []struct {
		method, path string
		body         any
	}{
		{"GET", "/v1/stages/tenant-a", nil},
		{"GET", "/v1/stages/tenant-a/steps/long", nil},
		{"GET", "/v1/stages/tenant-a/steps/long/logs?offset=0", nil},
		{"POST", "/v1/stages/tenant-a/groups", steal},
		{"POST", "/v1/stages/tenant-a/steps/long/cancel", nil},
		{"DELETE", "/v1/stages/tenant-a", nil},
	} {
		var refusal stage.ErrorBody
		if code := callAs(t, rt, b, c.method, c.path, c.body, &refusal); code != http.StatusNotFound || refusal.Error.Message != `no stage "tenant-a"` {
			t.Errorf("b: %s %s: %d %+v, want the 404 of no such stage", c.method, c.path, code, refusal)
		}
	}
	var list stage.StageList
	callAs(t, rt, b, "GET", "/v1/stages", nil, &list)
	for _, other := range list.Stages {
		if other.ID == "tenant-a" {
			t.Errorf("b lists a's stage")
		}
	}
	var refusal stage.ErrorBody
	if code := callAs(t, rt, "outsider", "POST", "/v1/stages", stage.Spec{ID: "tenant-x", Pool: "tenants"}, &refusal); code != http.StatusForbidden {
		t.Errorf("an outsider in the teams' pool: %d %+v", code, refusal)
	}
	// a's id is taken, and b learns nothing else of it.
	if code := callAs(t, rt, b, "POST", "/v1/stages", stage.Spec{ID: "tenant-a", Pool: "tenants"}, &refusal); code != http.StatusConflict ||
		refusal.Error.Message != "stage id tenant-a is taken: choose another" {
		t.Errorf("b creates a's id: %d %+v", code, refusal)
	}
	// The operator sees a's stage, listed and whole.
	var seen stage.Status
	if code := callAs(t, rt, "ops", "GET", "/v1/stages/tenant-a", nil, &seen); code != http.StatusOK || seen.ID != "tenant-a" {
		t.Errorf("the operator reads a's stage: %d %+v", code, seen)
	}
	callAs(t, rt, "ops", "GET", "/v1/stages?pool=tenants", nil, &list)
	if len(list.Stages) == 0 || list.Stages[0].ID != "tenant-a" {
		t.Errorf("the operator lists %+v", list.Stages)
	}
	// a's stage ran on as if b had never called, and a ends it.
	if code := callAs(t, rt, a, "POST", "/v1/stages/tenant-a/groups", group(true, s("last", "echo last")), &st); code != http.StatusCreated && code != http.StatusOK {
		t.Fatalf("a adds its last group: %d %+v", code, st)
	}
	var final stage.Status
	until(t, time.Minute, "a's stage released", func() bool {
		return callAs(t, rt, a, "GET", "/v1/stages/tenant-a", nil, &final) == http.StatusOK && final.Phase == stage.PhaseReleased
	})
	if final.Result != stage.Succeeded || len(final.Groups) != 2 {
		t.Fatalf("a's stage: %+v", final)
	}
	for _, g := range final.Groups {
		for _, step := range g.Steps {
			if step.ID == "steal" || step.State != stage.Succeeded {
				t.Errorf("a's step %s: %s", step.ID, step.State)
			}
		}
	}
	settled(t, rt, "tenants", "tenant-a")
}

// TestStuckStagesAreReleased: a stage recorded whose execution never
// started (StartExecution failed after the create wrote it), and one whose
// result is known but whose release never ran (the store was down then),
// are noticed by refill's watchdog once past its grace and released: the
// first ends error with the reason, the second keeps its result.
func TestStuckStagesAreReleased(t *testing.T) {
	t.Parallel()
	rt := runtime(t)
	ctx := context.Background()
	store := rt.Deployment.Stages
	for _, id := range []string{"stuck-unstarted", "stuck-unreleased"} {
		if _, err := store.CreateStage(ctx, record.NewStage{ID: id, Pool: "misc", SpecHash: "h", Spec: []byte(`{}`), Deadline: time.Now().Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := store.EndStage(ctx, "stuck-unreleased", stage.Failed, "step build failed (exit code 1)"); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]struct{ result, reason string }{
		"stuck-unstarted":  {stage.Errored, "the stage was not progressing: its execution never started"},
		"stuck-unreleased": {stage.Failed, "step build failed (exit code 1)"},
	} {
		st := released(t, rt, id, time.Minute)
		if st.Result != want.result || st.Reason != want.reason {
			t.Errorf("%s: %s (%s), want %s (%s)", id, st.Result, st.Reason, want.result, want.reason)
		}
	}
}
