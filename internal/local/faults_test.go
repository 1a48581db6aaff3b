package local_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/agent/agenttest"
	"github.com/slipway-ci/slipway/internal/awstest"
	"github.com/slipway-ci/slipway/internal/local"
	"github.com/slipway-ci/slipway/internal/stage"
	"github.com/slipway-ci/slipway/statemachine"
)

// The fault matrix: each dependency of a stage stops answering at each
// phase of a stage (the create, init's lease, the step, cleanup's release)
// for longer than the deadlines of the calls to it, then comes back; and
// where it can come back from it, it is killed. Every stage must end with a
// truthful result, no lease held, no process left, and the step's log whole.
// Each dependency has a runtime of its own, so its cases run one at a time
// while the dependencies run side by side.

// faultSpan is how long a dependency is gone: past every call's deadline
// (awsclient: 3 s and 10 s), well within a stage's.
const faultSpan = 12 * time.Second

// phases are the moments a fault strikes: before the create, or as the
// function of the phase is invoked for the stage.
var phases = []struct{ name, function string }{
	{"create", ""},
	{"init", statemachine.Init},
	{"step", statemachine.RunGroup},
	{"cleanup", statemachine.Cleanup},
}

// faultRuntime is a runtime whose Lambda endpoint can be held (invocations
// wait) or failed (Lambda answers 500 ServiceException), and which fires an
// armed fault when a function is invoked for a stage.
type faultRuntime struct {
	rt   *local.Runtime
	logs *agenttest.Buffer

	mu        sync.Mutex
	armed     map[string]func() // by "function/stage id"
	holdUntil time.Time
	failUntil time.Time
}

func startFaultRuntime(t *testing.T, pool string, o local.Options) *faultRuntime {
	t.Helper()
	f := &faultRuntime{logs: &agenttest.Buffer{}, armed: map[string]func(){}}
	o.Pools = append(o.Pools, local.LocalPool(pool, 1, 2))
	o.Tick, o.Metrics, o.Logs, o.Inject = time.Second, &agenttest.Buffer{}, f.logs, f.inject
	o.Settings.AcquirePoll = time.Second
	rt, err := startRuntime(o)
	if err != nil {
		t.Fatal(err)
	}
	f.rt = rt
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the runtime's log:\n%s", f.logs.Bytes())
		}
		if refused := rt.Refusals(); len(refused) > 0 {
			t.Errorf("writes outside the functions' partitions (deploy.Partitions):\n%s", strings.Join(refused, "\n"))
		}
		dir := rt.Dir
		rt.Close()
		if left := agenttest.ProcessesUnder(dir); len(left) > 0 {
			t.Errorf("processes left after Close: %v", left)
		}
	})
	return f
}

func (f *faultRuntime) inject(function string, payload []byte) *local.Fault {
	var in struct {
		StageID string `json:"stage_id"`
	}
	_ = json.Unmarshal(payload, &in)
	f.mu.Lock()
	fire := f.armed[function+"/"+in.StageID]
	delete(f.armed, function+"/"+in.StageID)
	f.mu.Unlock()
	if fire != nil {
		fire()
	}
	f.mu.Lock()
	hold, fail := f.holdUntil, f.failUntil
	f.mu.Unlock()
	time.Sleep(time.Until(hold))
	if time.Now().Before(fail) {
		return &local.Fault{Status: http.StatusInternalServerError, Type: "ServiceException", Message: "injected: Lambda is down"}
	}
	return nil
}

// arm has fault strike when function is next invoked for stage id.
func (f *faultRuntime) arm(function, id string, fault func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.armed[function+"/"+id] = fault
}

// pauseProcesses stops the processes now (SIGSTOP) and lets them go on
// after span.
func pauseProcesses(t *testing.T, pids []int, span time.Duration) {
	t.Helper()
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Errorf("pause %d: %v", pid, err)
		}
	}
	time.AfterFunc(span, func() {
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	})
}

// agentPIDs are the runtime's agent processes (not their steps').
func agentPIDs(rt *local.Runtime) []int {
	var pids []int
	for _, p := range agenttest.ProcessesUnder(filepath.Join(rt.Dir, "vms")) {
		pidText, cmdline, _ := strings.Cut(p, ": ")
		if pid, err := strconv.Atoi(pidText); err == nil && strings.Contains(cmdline, "--addr") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// faultStage is the stage every case runs: one step with a log of two lines
// a second apart, so a fault can strike between them, and a secret (sealed
// with KMS at the create, opened for the step), masked in the log.
func faultStage(id, pool string) stage.Spec {
	return stage.Spec{ID: id, Pool: pool, Secrets: map[string]string{"TOKEN": "f4ult-s3cret"}, Groups: []stage.Group{
		group(true, s("build", `echo "start $TOKEN"; sleep 1; echo done`)),
	}}
}

// faultLog is the fault stage's whole log.
const faultLog = "start ******\ndone\n"

// createRetrying creates the stage as a delegate does while a dependency
// is down: a 503 or a lost answer is retried (after Retry-After), for up to
// two minutes; the create is idempotent, so a retry of one that went
// through answers the same stage.
func createRetrying(t *testing.T, rt *local.Runtime, spec stage.Spec) {
	t.Helper()
	body, _ := json.Marshal(spec)
	for deadline := time.Now().Add(2 * time.Minute); ; {
		resp, err := http.Post(rt.APIURL+"/v1/stages", "application/json", bytes.NewReader(body))
		wait := time.Second
		if err == nil {
			resp.Body.Close()
			switch {
			case resp.StatusCode == http.StatusCreated || resp.StatusCode == http.StatusOK:
				return
			case resp.StatusCode != http.StatusServiceUnavailable:
				t.Fatalf("create %s: %s, neither a stage nor retryable", spec.ID, resp.Status)
			}
			if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
				wait = time.Duration(s) * time.Second
			} else {
				t.Errorf("create %s: a 503 without Retry-After", spec.ID)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("create %s: still refused after two minutes (%v)", spec.ID, err)
		}
		time.Sleep(wait)
	}
}

// runFaultCase runs the fault stage with fault striking at phase, and
// returns it once released, checking what every case must leave.
func runFaultCase(t *testing.T, f *faultRuntime, pool, id, phase, function string, fault func()) *stage.Status {
	t.Helper()
	warm(t, f.rt, pool, 1)
	spec := faultStage(id, pool)
	if function == "" {
		fault()
		createRetrying(t, f.rt, spec)
	} else {
		f.arm(function, id, fault)
		create(t, f.rt, spec)
	}
	st := released(t, f.rt, id, 3*time.Minute)
	settled(t, f.rt, pool, id)
	return st
}

// wantPassed checks that a stage whose dependency came back passed, with its
// whole log.
func wantPassed(t *testing.T, rt *local.Runtime, st *stage.Status) {
	t.Helper()
	if st.Result != stage.Succeeded {
		t.Errorf("stage %s: %s (%s), want succeeded: the build passed", st.ID, st.Result, st.Reason)
	}
	if got := archivedLog(t, rt, st.ID, "build"); got != faultLog {
		t.Errorf("stage %s: log %q, want both lines", st.ID, got)
	}
}

// pausedMatrix runs the four phases with a dependency paused for faultSpan.
func pausedMatrix(t *testing.T, f *faultRuntime, pool string, pause func()) {
	for _, ph := range phases {
		t.Run("paused at "+ph.name, func(t *testing.T) {
			st := runFaultCase(t, f, pool, pool+"-paused-"+ph.name, ph.name, ph.function, pause)
			wantPassed(t, f.rt, st)
		})
	}
}

// TestFaultsOfTheTable and TestFaultsOfKMS pause the runtime's own DynamoDB
// Local and local-kms; killed, either stops the runtime whole (it keeps
// the books in memory), leaving no process.
func TestFaultsOfTheTable(t *testing.T) {
	t.Parallel()
	pool := "f-table"
	f := startFaultRuntime(t, pool, local.Options{KMSEndpoint: awstest.KMSEndpoint(t), Settings: stage.Settings{WatchGrace: 10 * time.Second}})
	pid := f.rt.PIDs()["DynamoDB Local"]
	pausedMatrix(t, f, pool, func() { pauseProcesses(t, []int{pid}, faultSpan) })
	// Down for longer than cleanup's retries: the execution ends
	// ReleaseFailed with the stage releasing and its VM leased; once the
	// table is back, the watchdog finishes the release.
	t.Run("down past cleanup's retries", func(t *testing.T) {
		warm(t, f.rt, pool, 1)
		id := pool + "-release-failed"
		f.arm(statemachine.Cleanup, id, func() { _ = syscall.Kill(pid, syscall.SIGSTOP) })
		defer func() { _ = syscall.Kill(pid, syscall.SIGCONT) }()
		create(t, f.rt, faultStage(id, pool))
		if status := executionStatusWithin(t, f.rt, id, 6*time.Minute); status != "FAILED" {
			t.Fatalf("execution %s with the table down, want FAILED (ReleaseFailed)", status)
		}
		_ = syscall.Kill(pid, syscall.SIGCONT)
		wantPassed(t, f.rt, released(t, f.rt, id, 2*time.Minute))
		settled(t, f.rt, pool, id)
	})
	killedUnderAStage(t, f, pool, "DynamoDB Local", pid)
}

func TestFaultsOfKMS(t *testing.T) {
	t.Parallel()
	f := startFaultRuntime(t, "f-kms", local.Options{DynamoDBEndpoint: awstest.DynamoDBEndpoint(t)})
	pid := f.rt.PIDs()["local-kms"]
	pausedMatrix(t, f, "f-kms", func() { pauseProcesses(t, []int{pid}, faultSpan) })
	killedUnderAStage(t, f, "f-kms", "local-kms", pid)
}

// TestFaultsOfTheEngine pauses the ASL engine; killed, it stops the runtime
// whole (its executions are gone with it).
func TestFaultsOfTheEngine(t *testing.T) {
	t.Parallel()
	f := startFaultRuntime(t, "f-engine", local.Options{DynamoDBEndpoint: awstest.DynamoDBEndpoint(t), KMSEndpoint: awstest.KMSEndpoint(t)})
	pid := f.rt.PIDs()["the Step Functions engine"]
	pausedMatrix(t, f, "f-engine", func() { pauseProcesses(t, []int{pid}, faultSpan) })
	killedUnderAStage(t, f, "f-engine", "the Step Functions engine", pid)
}

// killedUnderAStage kills a service of the runtime while a step runs: the
// runtime says which died and stops whole, and nothing it started lives on.
func killedUnderAStage(t *testing.T, f *faultRuntime, pool, part string, pid int) {
	t.Run("killed mid-step", func(t *testing.T) {
		warm(t, f.rt, pool, 1)
		id := pool + "-killed"
		create(t, f.rt, stage.Spec{ID: id, Pool: pool, Groups: []stage.Group{group(true, s("long", "sleep 300"))}})
		until(t, time.Minute, "the step running", func() bool { return len(processesOfStage(id)) > 0 })
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		select {
		case <-f.rt.Died():
		case <-time.After(30 * time.Second):
			t.Fatalf("%s killed: the runtime did not notice in 30 s", part)
		}
		if err := f.rt.Err(); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%s (pid %d)", part, pid)) {
			t.Errorf("the runtime's error %v does not name %s (pid %d)", err, part, pid)
		}
		dir := f.rt.Dir
		f.rt.Close()
		until(t, 30*time.Second, "no process of the stage or the runtime", func() bool {
			return len(processesOfStage(id)) == 0 && len(agenttest.ProcessesUnder(dir)) == 0
		})
	})
}

// TestFaultsOfTheAgent pauses the VM's agent at each phase (within the agent
// grace: the stage passes) and kills it at each: before the lease, and at
// init before the bind, the stage gets another VM and passes; at the step
// (or at init after the API bound the stage) it ends error, ours, not the
// build's; before the release, the stage passes with its whole log,
// archived as its step ended.
func TestFaultsOfTheAgent(t *testing.T) {
	t.Parallel()
	pool := "f-agent"
	f := startFaultRuntime(t, pool, local.Options{DynamoDBEndpoint: awstest.DynamoDBEndpoint(t), KMSEndpoint: awstest.KMSEndpoint(t)})
	pausedMatrix(t, f, pool, func() { pauseProcesses(t, agentPIDs(f.rt), faultSpan) })
	var killed sync.Map // launch ids of the VMs whose agents a kill ended
	kill := func() {
		vms := filepath.Join(f.rt.Dir, "vms")
		for _, p := range agenttest.ProcessesUnder(vms) {
			pidText, cmdline, _ := strings.Cut(p, ": ")
			pid, err := strconv.Atoi(pidText)
			_, after, _ := strings.Cut(cmdline, vms+string(filepath.Separator))
			launchID, _, _ := strings.Cut(after, string(filepath.Separator))
			if err == nil && strings.Contains(cmdline, "--addr") {
				killed.Store(launchID, true)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	for _, ph := range phases {
		t.Run("killed at "+ph.name, func(t *testing.T) {
			st := runFaultCase(t, f, pool, pool+"-killed-"+ph.name, ph.name, ph.function, kill)
			step := st.Groups[0].Steps[0]
			// The API binds a stage to an idle VM as it creates it, so init's
			// invocation may come before that bind or after it: before, init
			// finds the agent dead and leases another VM; after, the stage
			// holds a VM whose agent died, as a kill at the step does.
			_, ranOnKilled := killed.Load(st.VM)
			switch {
			case ph.name == "step" || ph.name == "init" && ranOnKilled:
				if st.Result != stage.Errored || step.State != "error" || !strings.Contains(step.Error, "the agent did not answer") {
					t.Errorf("stage %s: %s (%s), step %s (%s); want error: the agent did not answer", st.ID, st.Result, st.Reason, step.State, step.Error)
				}
			default:
				wantPassed(t, f.rt, st)
			}
		})
	}
}

// TestFaultsOfLambda holds the Lambda endpoint's invocations at each phase
// (they wait, as on a throttled or slow service), and fails them all for a
// while (Lambda answers 500 ServiceException, which the state machine
// retries): either way the stage passes once Lambda is back.
func TestFaultsOfLambda(t *testing.T) {
	t.Parallel()
	pool := "f-lambda"
	f := startFaultRuntime(t, pool, local.Options{DynamoDBEndpoint: awstest.DynamoDBEndpoint(t), KMSEndpoint: awstest.KMSEndpoint(t)})
	pausedMatrix(t, f, pool, func() {
		f.mu.Lock()
		f.holdUntil = time.Now().Add(faultSpan)
		f.mu.Unlock()
	})
	for _, ph := range phases {
		t.Run("down at "+ph.name, func(t *testing.T) {
			st := runFaultCase(t, f, pool, pool+"-down-"+ph.name, ph.name, ph.function, func() {
				f.mu.Lock()
				f.failUntil = time.Now().Add(faultSpan)
				f.mu.Unlock()
			})
			wantPassed(t, f.rt, st)
		})
	}
}
