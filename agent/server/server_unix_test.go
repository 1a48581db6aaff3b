//go:build unix

package server_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/agent/agenttest"
	"github.com/slipway-ci/slipway/agent/server"
)

// alive reports whether pid runs; a zombie (dead, not yet reaped by
// whichever process adopted it) does not count.
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	i := strings.LastIndexByte(string(stat), ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}

// readPID waits for a step to write a pid into file.
func readPID(t *testing.T, file string) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		data, err := os.ReadFile(file)
		if err == nil && strings.HasSuffix(string(data), "\n") {
			pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
			if err == nil {
				return pid
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no pid in %s", file)
	return 0
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for alive(pid) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if alive(pid) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("process %d outlived its step", pid)
	}
}

func TestCancelKillsForkedChildren(t *testing.T) {
	a := boundAgent(t, agentapi.Stage{}, server.Config{})
	ctx := agenttest.Context(t)
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	// The child ignores SIGTERM, so only the SIGKILL after the grace period ends it.
	spec := agentapi.Step{Script: fmt.Sprintf("sh -c 'trap \"\" TERM; echo $$ > %s; while true; do sleep 1; done' &\nwait", pidFile)}
	st, err := a.Client.StartStep(ctx, stageID, "forks", &spec)
	if err != nil {
		t.Fatal(err)
	}
	child := readPID(t, pidFile)
	if _, err := a.Client.CancelStep(ctx, stageID, "forks"); err != nil {
		t.Fatal(err)
	}
	end, err := a.Client.WaitStep(ctx, stageID, "forks", st.BootID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if end.State != agentapi.StepCanceled {
		t.Fatalf("state %s, want canceled", end.State)
	}
	waitGone(t, child)
}

func TestBackgroundChildDiesWithItsStep(t *testing.T) {
	a := boundAgent(t, agentapi.Stage{}, server.Config{})
	pidFile := filepath.Join(t.TempDir(), "bg.pid")
	start := time.Now()
	st := run(t, a, "bg", agentapi.Step{Script: fmt.Sprintf("sleep 1000 &\necho $! > %s\necho main done", pidFile)})
	if st.State != agentapi.StepSucceeded {
		t.Fatalf("state %s", st.State)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the step took %s: its background child kept it open", took)
	}
	waitGone(t, readPID(t, pidFile))
}

func TestDestroyReturnsUsageAndCleansUp(t *testing.T) {
	a := boundAgent(t, agentapi.Stage{}, server.Config{})
	ctx := agenttest.Context(t)
	run(t, a, "burn", agentapi.Step{Script: "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; head -c 100000 /dev/zero > blob"})
	pidFile := filepath.Join(t.TempDir(), "pid")
	if _, err := a.Client.StartStep(ctx, stageID, "left-running", &agentapi.Step{Script: fmt.Sprintf("echo $$ > %s; exec sleep 1000", pidFile)}); err != nil {
		t.Fatal(err)
	}
	pid := readPID(t, pidFile)
	usage, err := a.Client.DestroyStage(ctx, stageID)
	if err != nil {
		t.Fatal(err)
	}
	if usage.Steps != 2 || usage.CPUSeconds <= 0 || usage.DiskBytes < 100000 {
		t.Fatalf("usage %+v", usage)
	}
	// The steps' own peak (from their cgroups' memory.peak), or none where
	// the memory controller is not the agent's: never the agent's own.
	if hwm := ownPeakMemory(t); usage.PeakMemoryByte == hwm || usage.PeakMemoryByte > 256<<20 || usage.PeakMemoryByte < 0 {
		t.Errorf("peak memory %d (the agent's own is %d)", usage.PeakMemoryByte, hwm)
	}
	waitGone(t, pid)
	if _, err := os.Stat(filepath.Join(a.WorkRoot, stageID)); !os.IsNotExist(err) {
		t.Fatalf("stage folder still there: %v", err)
	}
	again, err := a.Client.DestroyStage(ctx, stageID)
	if err != nil || *again != *usage {
		t.Fatalf("second destroy: %+v, %v", again, err)
	}
	h, err := a.Client.Health(ctx)
	if err != nil || h.Stage != "" {
		t.Fatalf("health after destroy: %+v, %v", h, err)
	}
	// Unbound now: a new stage may bind.
	if _, err := a.Client.BindStage(ctx, &agentapi.Stage{ID: "stage-2"}); err != nil {
		t.Fatal(err)
	}
}

// multiUserAgent is a bound agent that can run steps as other users: as
// root, as on a VM, in a work root other users may pass through (a test's
// temporary folders are private). Without root it is skipped, except in
// CI, where it fails.
func multiUserAgent(t *testing.T) *agenttest.Agent {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("steps as other users need the agent to run as root, as CI does")
		}
		t.Skip("steps as other users need the agent to run as root, as it does on a VM")
	}
	root := t.TempDir()
	for _, d := range []string{filepath.Dir(root), root} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return boundAgent(t, agentapi.Stage{}, server.Config{WorkRoot: root})
}

func TestStepAsAnotherUser(t *testing.T) {
	a := multiUserAgent(t)
	st := run(t, a, "nobody", agentapi.Step{
		Script: `touch made-by-nobody; echo "WHO=$(id -u):$(id -g)" >> "$SLIPWAY_OUTPUT"`,
		User:   "65534:65534",
	})
	if st.State != agentapi.StepSucceeded {
		t.Fatalf("state %s: %s %q", st.State, st.Error, logOf(t, a, "nobody"))
	}
	if st.Outputs["WHO"] != "65534:65534" {
		t.Fatalf("outputs %v", st.Outputs)
	}
	info, err := os.Stat(filepath.Join(a.WorkRoot, stageID, "work", "made-by-nobody"))
	if err != nil {
		t.Fatal(err)
	}
	if uid := info.Sys().(*syscall.Stat_t).Uid; uid != 65534 {
		t.Fatalf("file owned by %d", uid)
	}
}

// A step that runs as another user cannot borrow the agent's root to read
// what it may not: its $SLIPWAY_OUTPUT made a link to a root-only file, or
// a report that links to one, comes back neither in its outputs, its error
// nor its report; a report that is a FIFO does not hang the step.
func TestStepFilesAreNotFollowedOutOfTheStep(t *testing.T) {
	a := multiUserAgent(t)
	secretFile := filepath.Join(t.TempDir(), "root-only")
	if err := os.WriteFile(secretFile, []byte("ROOT_ONLY=t0p-s3cret\n<testsuite><testcase name=\"t0p-s3cret\"><failure message=\"t0p-s3cret\"/></testcase></testsuite>\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	st := run(t, a, "borrow", agentapi.Step{
		Script: fmt.Sprintf(`rm -f "$SLIPWAY_OUTPUT"; ln -s %s "$SLIPWAY_OUTPUT"; ln -s %s linked.xml; mkfifo fifo.xml
			echo '<testsuite><testcase name="ok"/></testsuite>' > z.xml`, secretFile, secretFile),
		User:    "65534:65534",
		Outputs: []string{"ROOT_ONLY"},
		Reports: []string{"*.xml"},
	})
	answer, _ := json.Marshal(st)
	if strings.Contains(string(answer), "t0p-s3cret") || strings.Contains(logOf(t, a, "borrow"), "t0p-s3cret") {
		t.Fatalf("the root-only file came back: %s", answer)
	}
	if !strings.Contains(st.Error, "path escapes") {
		t.Fatalf("error %q: want the link refused", st.Error)
	}
	// The report beside them is read all the same.
	if st.Tests == nil || st.Tests.Files != 1 || st.Tests.Tests != 1 {
		t.Fatalf("reports %+v", st.Tests)
	}
	notes := strings.Join(st.Tests.Notes, "\n")
	if !strings.Contains(notes, "linked.xml: path escapes") || !strings.Contains(notes, "fifo.xml: not a regular file") {
		t.Fatalf("report notes %q", st.Tests.Notes)
	}
}

// TestEscapedProcessesDie: steps start daemons with setsid, out of their
// process groups. One that keeps its step's output open dies when the step
// ends (which does not wait for it); one that lets go dies with the stage.
func TestEscapedProcessesDie(t *testing.T) {
	a := boundAgent(t, agentapi.Stage{}, server.Config{})
	dir := t.TempDir()
	holds, lets := filepath.Join(dir, "holds.pid"), filepath.Join(dir, "lets-go.pid")
	steps := []struct{ id, script string }{
		{"holds", fmt.Sprintf("setsid sh -c 'echo $$ > %s; exec sleep 1000' &\nsleep 0.2", holds)},
		{"lets-go", fmt.Sprintf("setsid sh -c 'echo $$ > %s; exec sleep 1000' > /dev/null 2>&1 < /dev/null &\nsleep 0.2", lets)},
	}
	for _, s := range steps {
		start := time.Now()
		st := run(t, a, s.id, agentapi.Step{Script: s.script})
		if st.State != agentapi.StepSucceeded {
			t.Fatalf("%s: state %s", s.id, st.State)
		}
		if took := time.Since(start); took > 1500*time.Millisecond {
			t.Fatalf("%s: the step took %s: it waited for its daemon", s.id, took)
		}
	}
	waitGone(t, readPID(t, holds))
	other := readPID(t, lets)
	if !alive(other) {
		t.Fatal("the daemon that let go of the output died before its stage")
	}
	if _, err := a.Client.DestroyStage(agenttest.Context(t), stageID); err != nil {
		t.Fatal(err)
	}
	waitGone(t, other)
}

// A step's raw outputs are its own: another step, as another user or not,
// cannot read them, and a later step that prints an earlier step's secret
// anyway has it masked.
func TestAStepsSecretsStayItsOwn(t *testing.T) {
	a := multiUserAgent(t)
	ctx := agenttest.Context(t)
	// The first step writes its secret to its outputs and, while it runs,
	// lets the others look.
	first := agentapi.Step{
		Script:  `echo "TOKEN=$MINE" >> "$SLIPWAY_OUTPUT"; echo "$SLIPWAY_OUTPUT" > ../where; sleep 1`,
		Secrets: map[string]string{"MINE": "only-for-the-first-step"},
	}
	if _, err := a.Client.StartStep(ctx, stageID, "first", &first); err != nil {
		t.Fatal(err)
	}
	for range 100 {
		if _, err := os.Stat(filepath.Join(a.WorkRoot, stageID, "where")); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	snoop := run(t, a, "snoop", agentapi.Step{
		Script: `cat "$(cat ../where)" || echo unreadable; ls "$(dirname "$(dirname "$(cat ../where)")")" || echo unlistable`,
		User:   "65534:65534",
	})
	if st, err := a.Client.WaitStep(ctx, stageID, "first", snoop.BootID, 0); err != nil || st.Outputs["TOKEN"] != "******" {
		t.Fatalf("first step: %+v %v", st, err)
	}
	if got := logOf(t, a, "snoop"); strings.Contains(got, "only-for") || !strings.Contains(got, "unreadable") || !strings.Contains(got, "unlistable") {
		t.Errorf("another user's step read the first step's outputs: %q", got)
	}
	// Once the first step ended its raw outputs are gone; and a later step
	// that learnt the secret some other way prints it masked.
	later := run(t, a, "later", agentapi.Step{Script: `cat "$(cat ../where)" 2>/dev/null || echo gone; echo only-for-the-first-step`})
	if got := logOf(t, a, "later"); got != "gone\n******\n" || later.State != agentapi.StepSucceeded {
		t.Errorf("a later step's log %q", got)
	}
	entries, _ := os.ReadDir(filepath.Join(a.WorkRoot, stageID, "steps"))
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".outputs") {
			t.Errorf("%s is left after its step", e.Name())
		}
	}
}

// ownPeakMemory is this process's VmHWM: the in-process agent's.
func ownPeakMemory(t *testing.T) int64 {
	t.Helper()
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1 // no /proc here
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// A step whose log cannot be written (a full disk; here its log file's
// path is taken by a folder) fails with the reason, its output drained so
// that it runs to its end, and the agent goes on: the next step runs.
func TestStepWhoseLogCannotBeWritten(t *testing.T) {
	// With a secret: the masking writer, not only the plain copy, meets the
	// failure (it once panicked at the step's end, taking the agent down).
	a := boundAgent(t, agentapi.Stage{Secrets: map[string]string{"TOKEN": "l0g-s3cret"}}, server.Config{})
	if err := os.Mkdir(filepath.Join(a.WorkRoot, stageID, "steps", "loud.log"), 0o700); err != nil {
		t.Fatal(err)
	}
	// 1 MiB: far more than a pipe holds, so a writer that stopped reading
	// would leave the step blocked until its timeout.
	st := run(t, a, "loud", agentapi.Step{Script: "echo $TOKEN; head -c 1048576 /dev/zero | tr '\\0' x; echo; exit 0", TimeoutSeconds: 60})
	if st.State != agentapi.StepError || !strings.Contains(st.Error, "the step's log could not be written") ||
		st.ExitCode == nil || *st.ExitCode != 0 {
		t.Fatalf("step %+v, want error: the log could not be written (exit code 0 kept)", st)
	}
	if _, err := a.Client.Health(agenttest.Context(t)); err != nil {
		t.Fatalf("the agent after the failed log: %v", err)
	}
	if st := run(t, a, "after", agentapi.Step{Script: "echo still here"}); st.State != agentapi.StepSucceeded || logOf(t, a, "after") != "still here\n" {
		t.Fatalf("the next step: %+v", st)
	}
}
