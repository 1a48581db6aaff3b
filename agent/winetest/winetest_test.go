//go:build linux

package winetest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/agent/agenttest"
	"github.com/slipway-ci/slipway/agent/client"
)

// stopGrace is the agent's default time between CTRL_BREAK and the kill.
const stopGrace = 10 * time.Second

// buildWindowsAgent builds the agent for windows/amd64 with the wine tag
// (internal/winefix, which reaches into Go's runtime library: hence
// -checklinkname=0).
func buildWindowsAgent(t *testing.T) string {
	t.Helper()
	return agenttest.BuildAgentWith(t, []string{"GOOS=windows", "GOARCH=amd64"},
		"-tags", "wine", "-ldflags", "-checklinkname=0")
}

// launcher is .ci/wine. Without Wine the test fails in CI (where `make test`
// installs it) and is skipped elsewhere.
func launcher(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("wine64"); err != nil {
		if _, err := os.Stat("/usr/lib/wine/wine64"); err != nil {
			msg := "no wine64: run `make test`, which installs it (Debian's wine64 and gcc-mingw-w64-x86-64-win32)"
			if os.Getenv("CI") != "" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	path, err := filepath.Abs("../../.ci/wine")
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// startAgent runs the Windows agent under Wine with env added to its
// environment (Wine hands the Linux environment to Windows programs).
func startAgent(t *testing.T, env ...string) *agenttest.Process {
	t.Helper()
	return agenttest.StartLaunched(t, buildWindowsAgent(t), agenttest.Launch{
		Via:   []string{launcher(t)},
		Env:   env,
		Flags: []string{"--docker", "off"},
		// A first run makes the Wine prefix.
		Healthy: 2 * time.Minute,
	})
}

func bind(t *testing.T, c *client.Client, stage *agentapi.Stage) {
	t.Helper()
	if _, err := c.BindStage(agenttest.Context(t), stage); err != nil {
		t.Fatalf("bind %s: %v", stage.ID, err)
	}
}

// run runs a step to its end and returns its status and its log, with cmd's
// CRLF line ends made LF.
func run(t *testing.T, c *client.Client, stageID, stepID string, spec *agentapi.Step) (*agentapi.StepStatus, string) {
	t.Helper()
	ctx := agenttest.Context(t)
	st, err := c.RunStep(ctx, stageID, stepID, spec)
	if err != nil {
		t.Fatalf("step %s: %v", stepID, err)
	}
	return st, readLog(t, c, stageID, stepID)
}

func readLog(t *testing.T, c *client.Client, stageID, stepID string) string {
	t.Helper()
	log, _, err := c.ReadLogs(agenttest.Context(t), stageID, stepID, 0, 1<<20)
	if err != nil {
		t.Fatalf("log of %s: %v", stepID, err)
	}
	return strings.ReplaceAll(string(log), "\r\n", "\n")
}

func cmd(script string) *agentapi.Step { return &agentapi.Step{Shell: "cmd", Script: script} }

func exitCode(st *agentapi.StepStatus) int {
	if st.ExitCode == nil {
		return -1
	}
	return *st.ExitCode
}

func TestCmdScripts(t *testing.T) {
	a := startAgent(t)
	c := a.Client
	bind(t, c, &agentapi.Stage{ID: "cmd"})
	for _, tc := range []struct {
		name, script string
		state        agentapi.StepState
		exit         int
		log          string
	}{
		// Go quotes an argument's " as \", which cmd.exe keeps: the script
		// runs from a file instead of from cmd's command line.
		{"quotes", `echo "a b"` + "\n" + `echo 'c' "d"`, agentapi.StepSucceeded, 0, "\"a b\"\n'c' \"d\"\n"},
		// Every line runs, and the exit code is the script's.
		{"lines", "echo one\necho two\nexit 4\necho never", agentapi.StepFailed, 4, "one\ntwo\n"},
		{"exit-b", "echo before\nexit /b 3", agentapi.StepFailed, 3, "before\n"},
		// Batch-file syntax: %% is a percent sign, ^ escapes.
		{"batch-syntax", "echo 100%% ^& more\nset X=1\nif %X%==1 (echo if-ran) else (echo else-ran)", agentapi.StepSucceeded, 0, "100% & more\nif-ran\n"},
		{"no-echo-of-commands", "set Y=2\necho y=%Y%", agentapi.StepSucceeded, 0, "y=2\n"},
		{"failing-command", "cmd /c exit 9", agentapi.StepFailed, 9, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, log := run(t, c, "cmd", tc.name, cmd(tc.script))
			if st.State != tc.state || exitCode(st) != tc.exit {
				t.Errorf("state %s exit %d error %q, want %s exit %d", st.State, exitCode(st), st.Error, tc.state, tc.exit)
			}
			if log != tc.log {
				t.Errorf("log %q, want %q", log, tc.log)
			}
		})
	}
	t.Run("command", func(t *testing.T) {
		st, log := run(t, c, "cmd", "command", &agentapi.Step{Command: []string{"cmd.exe", "/c", "echo argv & exit 7"}})
		if st.State != agentapi.StepFailed || exitCode(st) != 7 || log != "argv \n" {
			t.Errorf("state %s exit %d log %q, want failed exit 7 log %q", st.State, exitCode(st), log, "argv \n")
		}
	})
	t.Run("powershell", func(t *testing.T) {
		t.Skip("Wine 8.0's powershell.exe is a stub that runs nothing and exits 0; " +
			"the .ps1 file and its argv are unit-tested (executor.TestScriptCommand)")
	})
}

func TestEnvironmentInWindowsTerms(t *testing.T) {
	// The agent's own environment has foo; the stage's FOO must win, and a
	// stage's Path must replace the machine's PATH, not sit beside it.
	a := startAgent(t, "foo=agent")
	c := a.Client
	stagePath := `C:\windows\system32;C:\windows;C:\stage-bin`
	bind(t, c, &agentapi.Stage{ID: "env", Env: map[string]string{"FOO": "stage", "Path": stagePath}})
	st, log := run(t, c, "env", "env", cmd("set foo\necho [%PATH%]"))
	if st.State != agentapi.StepSucceeded {
		t.Fatalf("state %s error %q", st.State, st.Error)
	}
	want := "FOO=stage\n[" + stagePath + "]\n"
	if log != want {
		t.Errorf("log %q, want %q (one FOO, the stage's; the stage's path only)", log, want)
	}
	// A step's own env beats the stage's, whatever its case.
	st, log = run(t, c, "env", "step-env", &agentapi.Step{Shell: "cmd", Script: "set foo", Env: map[string]string{"fOO": "step"}})
	if st.State != agentapi.StepSucceeded || log != "fOO=step\n" {
		t.Errorf("state %s log %q, want %q", st.State, log, "fOO=step\n")
	}
}

func TestIDsWindowsCannotHold(t *testing.T) {
	a := startAgent(t)
	c := a.Client
	// Ids differing only in case, and names of devices, each get files of
	// their own.
	bind(t, c, &agentapi.Stage{ID: "CON"})
	ids := []string{"Build", "build", "CON", "nul", "COM1", "aux"}
	for _, id := range ids {
		if st, _ := run(t, c, "CON", id, cmd("echo I am "+id)); st.State != agentapi.StepSucceeded {
			t.Errorf("step %s: state %s error %q", id, st.State, st.Error)
		}
	}
	for _, id := range ids {
		if log := readLog(t, c, "CON", id); log != "I am "+id+"\n" {
			t.Errorf("log of %s: %q, want %q", id, log, "I am "+id+"\n")
		}
	}
}

func TestOutputsSecretsExportsAndWorkDir(t *testing.T) {
	a := startAgent(t)
	c := a.Client
	bind(t, c, &agentapi.Stage{ID: "outputs", Secrets: map[string]string{"TOKEN": "s3cr3t-value"}})

	st, log := run(t, c, "outputs", "outputs", &agentapi.Step{Shell: "cmd", Script: strings.Join([]string{
		"echo t=%TOKEN%",
		`echo OUT=x%TOKEN%>>"%SLIPWAY_OUTPUT%"`,
		`echo PLAIN=hello world>>"%SLIPWAY_OUTPUT%"`,
		`echo A=exported>>"%SLIPWAY_ENV%"`,
	}, "\n"), Outputs: []string{"OUT", "PLAIN"}})
	if st.State != agentapi.StepSucceeded {
		t.Fatalf("state %s error %q", st.State, st.Error)
	}
	if strings.Contains(log, "s3cr3t") || log != "t=******\n" {
		t.Errorf("log %q, want the secret masked: %q", log, "t=******\n")
	}
	if st.Outputs["OUT"] != "x******" || st.Outputs["PLAIN"] != "hello world" {
		t.Errorf("outputs %q, want OUT masked and PLAIN without cmd's CR", st.Outputs)
	}

	st, log = run(t, c, "outputs", "later", &agentapi.Step{Shell: "cmd", Script: "echo [%A%]\ncd", WorkDir: "sub/dir"})
	if st.State != agentapi.StepSucceeded {
		t.Fatalf("state %s error %q", st.State, st.Error)
	}
	lines := strings.Split(strings.TrimSuffix(log, "\n"), "\n")
	if len(lines) != 2 || lines[0] != "[exported]" || !strings.HasSuffix(lines[1], `\sub\dir`) {
		t.Errorf("log %q, want the export and a work dir ending in \\sub\\dir", log)
	}
}

// late.cmd waits about %1 seconds and then writes the file MARK names: a
// process that outlived what should have ended it leaves the file behind.
// (Wine's tasklist is a stub, so processes are told by what they do.)
var lateScript = agentapi.File{Path: "late.cmd", Data: []byte("@echo off\r\nping -n %1 127.0.0.1 >nul\r\necho late>\"%MARK%\"\r\n")}

// mark is a file for late.cmd to write: its Linux path, and MARK=the same
// file through Wine's Z: drive.
func mark(t *testing.T, name string) (path, env string) {
	path = filepath.Join(t.TempDir(), name)
	return path, "Z:" + strings.ReplaceAll(path, "/", `\`)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func TestTheJobObjectEndsWhatAStepLeft(t *testing.T) {
	a := startAgent(t)
	c := a.Client
	bind(t, c, &agentapi.Stage{ID: "job", Files: []agentapi.File{lateScript}})

	// The control: a background child writes its mark while its step lives.
	control, controlEnv := mark(t, "control")
	st, _ := run(t, c, "job", "control", &agentapi.Step{Shell: "cmd", Env: map[string]string{"MARK": controlEnv},
		Script: "start /b cmd /c late.cmd 2\nping -n 6 127.0.0.1 >nul"})
	if st.State != agentapi.StepSucceeded || !exists(control) {
		t.Fatalf("control: state %s error %q, mark written %v; want a background child that writes its mark", st.State, st.Error, exists(control))
	}

	left, leftEnv := mark(t, "left")
	st, _ = run(t, c, "job", "leave", &agentapi.Step{Shell: "cmd", Env: map[string]string{"MARK": leftEnv},
		Script: "start /b cmd /c late.cmd 2\necho left one"})
	if st.State != agentapi.StepSucceeded {
		t.Fatalf("state %s error %q", st.State, st.Error)
	}
	time.Sleep(4 * time.Second) // twice the child's wait: a negative check
	if exists(left) {
		t.Error("the step's background child outlived the step and wrote its mark")
	}
}

func TestTimeoutAndCancel(t *testing.T) {
	a := startAgent(t)
	c := a.Client
	bind(t, c, &agentapi.Stage{ID: "stop", Files: []agentapi.File{lateScript}})
	ctx := agenttest.Context(t)
	// Each step would write its mark after 15 s, past the grace.
	timeoutMark, timeoutEnv := mark(t, "timeout")
	cancelMark, cancelEnv := mark(t, "cancel")
	began := time.Now()
	if _, err := c.StartStep(ctx, "stop", "timeout", &agentapi.Step{Shell: "cmd", Script: "call late.cmd 16",
		Env: map[string]string{"MARK": timeoutEnv}, TimeoutSeconds: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartStep(ctx, "stop", "cancel", &agentapi.Step{Shell: "cmd", Script: "call late.cmd 16",
		Env: map[string]string{"MARK": cancelEnv}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CancelStep(ctx, "stop", "cancel"); err != nil {
		t.Fatal(err)
	}
	took := map[string]time.Duration{}
	for id, want := range map[string]agentapi.StepState{"timeout": agentapi.StepTimedOut, "cancel": agentapi.StepCanceled} {
		st, err := c.WaitStep(ctx, "stop", id, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		took[id] = time.Since(began)
		if st.State != want {
			t.Errorf("%s: state %s error %q, want %s", id, st.State, st.Error, want)
		}
	}
	t.Logf("the timeout ended its step in %s, the cancel in %s (grace %s)",
		took["timeout"].Round(time.Millisecond), took["cancel"].Round(time.Millisecond), stopGrace)
	time.Sleep(time.Until(began.Add(18 * time.Second))) // past the marks' time: a negative check
	if exists(timeoutMark) || exists(cancelMark) {
		t.Errorf("a stopped step ran on: timeout's mark %v, cancel's %v", exists(timeoutMark), exists(cancelMark))
	}

	t.Run("ctrl-break-within-the-grace", func(t *testing.T) {
		if took["cancel"] >= stopGrace {
			t.Skip("Wine 8.0 cannot send CTRL_BREAK to another console's processes " +
				"(executor.TestCtrlBreakReachesTheStep): the step ended by the grace's kill")
		}
	})
}

func TestDestroyRemovesTheStage(t *testing.T) {
	a := startAgent(t)
	c := a.Client
	bind(t, c, &agentapi.Stage{ID: "gone", Secrets: map[string]string{"TOKEN": "another-secret"}})
	if st, _ := run(t, c, "gone", "write", cmd(`echo data>file.txt`+"\n"+`echo OUT=%TOKEN%>>"%SLIPWAY_OUTPUT%"`)); st.State != agentapi.StepSucceeded {
		t.Fatalf("state %s error %q", st.State, st.Error)
	}
	usage, err := c.DestroyStage(context.Background(), "gone")
	if err != nil {
		t.Fatal(err)
	}
	if usage.Leftover != "" {
		t.Errorf("leftover %q, want the stage's folder removed", usage.Leftover)
	}
	entries, err := os.ReadDir(filepath.Join(a.Dir, "work"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("work dir holds %v after destroy", entries)
	}
}

// The agent as Windows runs it on a build VM: a service, with no console,
// whose steps get consoles of their own.
func TestAsAService(t *testing.T) {
	wine := launcher(t)
	exe := buildWindowsAgent(t)
	p := agenttest.NewPKI(t)
	addr := "127.0.0.1:" + agenttest.FreePort(t)
	name := "slipway-agent"
	// sc's output goes to a file, not a pipe: the services.exe it may start
	// inherits the handles and would hold a pipe open for good.
	scOut := filepath.Join(t.TempDir(), "sc.out")
	sc := func(args ...string) (string, error) {
		f, err := os.Create(scOut)
		if err != nil {
			return "", err
		}
		cmd := exec.Command(wine, append([]string{"sc"}, args...)...)
		cmd.Stdout, cmd.Stderr = f, f
		err = cmd.Run()
		_ = f.Close()
		out, _ := os.ReadFile(scOut)
		return string(out), err
	}
	bin := fmt.Sprintf(`%s --addr %s --tls-cert %s --tls-key %s --client-ca %s --work-dir %s --docker off`,
		winPath(exe), addr, winPath(p.CertPath), winPath(p.KeyPath), winPath(p.CACertPath), winPath(filepath.Join(p.Dir, "work")))
	// Wine ends its services when no other Windows process is left, and sc
	// ends at once: something must run for as long as the test does. At the
	// end every process of the prefix goes (wineboot -k), services.exe too.
	keepAlive := exec.Command(wine, "cmd", "/c", "ping -n 3600 127.0.0.1 >nul")
	if err := keepAlive.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = exec.Command(wine, "wineboot", "-k").Run()
		_ = keepAlive.Process.Kill()
		_ = keepAlive.Wait()
	})
	_, _ = sc("delete", name) // left by a test that was killed
	if out, err := sc("create", name, "binPath=", bin); err != nil {
		t.Fatalf("sc create: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		_, _ = sc("stop", name)
		_, _ = sc("delete", name)
	})
	if out, err := sc("start", name); err != nil {
		t.Fatalf("sc start: %v\n%s", err, out)
	}
	a := &agenttest.Agent{PKI: p}
	c := a.NewClient(t, addr)
	if _, err := c.WaitHealthy(context.Background(), time.Minute, 100*time.Millisecond); err != nil {
		t.Fatalf("the service's agent: %v", err)
	}
	bind(t, c, &agentapi.Stage{ID: "svc"})
	st, log := run(t, c, "svc", "step", cmd("echo from a service"))
	if st.State != agentapi.StepSucceeded || log != "from a service\n" {
		t.Errorf("state %s error %q log %q", st.State, st.Error, log)
	}
	// The service control manager's stop ends the agent.
	if out, err := sc("stop", name); err != nil {
		t.Fatalf("sc stop: %v\n%s", err, out)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		out, err := sc("query", name)
		if err == nil && strings.Contains(out, "STOPPED") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the service did not stop in a minute: %v\n%s", err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := c.Health(context.Background()); err == nil {
		t.Error("the agent still answers after its service stopped")
	}
}

func winPath(p string) string { return "Z:" + strings.ReplaceAll(p, "/", `\`) }
