package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/agent/agenttest"
	"github.com/slipway-ci/slipway/agent/executor"
	"github.com/slipway-ci/slipway/internal/busyboximage"
	"github.com/slipway-ci/slipway/internal/delegate"
	"github.com/slipway-ci/slipway/internal/stage"
)

// TestLocalCommand runs `slipway local` as a user does, once on a machine
// where nothing runs (it starts DynamoDB Local and local-kms itself) and
// once given their endpoints: it comes up, a stage runs through it, and
// Ctrl-C (the context's end) stops everything it started, leaving no
// process behind.
func TestLocalCommand(t *testing.T) {
	bin := agenttest.BuildAgent(t)
	// One after the other: each judges the test's child processes.
	t.Run("own services", func(t *testing.T) {
		testLocalCommand(t, bin, "--dynamodb-endpoint", "", "--kms-endpoint", "")
	})
	t.Run("given endpoints", func(t *testing.T) {
		testLocalCommand(t, bin)
	})
}

func testLocalCommand(t *testing.T, bin string, flags ...string) {
	dir := filepath.Join(t.TempDir(), "rt")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &agenttest.Buffer{}
	done := make(chan error, 1)
	go func() {
		args := []string{"local", "--listen", "127.0.0.1:0", "--agent", bin, "--dir", dir, "--pool", "cli=1/2", "--tick", "1s"}
		done <- run(ctx, append(args, flags...), out)
	}()
	apiURL := ""
	for deadline := time.Now().Add(time.Minute); apiURL == ""; {
		select {
		case err := <-done:
			t.Fatalf("slipway local ended: %v\n%s", err, out.String())
		case <-time.After(100 * time.Millisecond):
		}
		if m := regexp.MustCompile(`delegate API\s+(http://\S+)`).FindStringSubmatch(out.String()); m != nil {
			apiURL = m[1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("slipway local did not come up:\n%s", out.String())
		}
	}
	if !strings.Contains(out.String(), "pools: cli (min idle 1, max 2)") {
		t.Errorf("the pools line is missing:\n%s", out.String())
	}
	api, err := delegate.New(apiURL, delegate.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := api.Create(ctx, &stage.Spec{ID: "cli-1", Pool: "cli", Groups: []stage.Group{{Final: true, Steps: []stage.Step{
		{ID: "hi", Step: agentapi.Step{Script: "echo hi"}},
	}}}}, 0); err != nil {
		t.Fatal(err)
	}
	st, err := api.Follow(ctx, "cli-1", nil)
	if err != nil || st.Result != stage.Succeeded {
		t.Fatalf("stage: %+v, %v", st, err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("slipway local after Ctrl-C: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("slipway local did not stop within 30 s")
	}
	if left := agenttest.Children(os.Getpid()); len(left) > 0 {
		t.Errorf("processes left after Ctrl-C: %v", left)
	}
}

func TestLocalFlags(t *testing.T) {
	for _, bad := range []string{"x", "x=1", "x=a/2", "x=3/2", "Bad Name=1/2"} {
		var p poolFlags
		if err := p.Set(bad); err == nil {
			t.Errorf("--pool %q was accepted", bad)
		}
	}
	err := run(context.Background(), []string{"local", "--repo", t.TempDir()}, &agenttest.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "--repo") {
		t.Errorf("outside a checkout: %v", err)
	}
}

// TestKilledLocalLeavesNoStep pauses `slipway local` under a stage (it
// passes once let go on), then kills it with SIGKILL under a running stage,
// as a crash or an OOM kill would: its agents, their step processes and
// their containers end too, rather than running on as orphans nobody will
// ever stop.
func TestKilledLocalLeavesNoStep(t *testing.T) {
	agent := agenttest.BuildAgent(t)
	tmp := t.TempDir()
	slipway := filepath.Join(tmp, "slipway")
	if out, err := exec.Command("go", "build", "-o", slipway, ".").CombinedOutput(); err != nil {
		t.Fatalf("build slipway: %v\n%s", err, out)
	}
	dir := filepath.Join(tmp, "rt")
	out := &agenttest.Buffer{}
	cmd := exec.Command(slipway, "local", "--listen", "127.0.0.1:0", "--agent", agent, "--dir", dir, "--pool", "kill=1/1", "--tick", "1s")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	defer func() { _ = cmd.Process.Kill(); <-exited }()
	apiURL := ""
	for deadline := time.Now().Add(time.Minute); apiURL == ""; time.Sleep(100 * time.Millisecond) {
		if m := regexp.MustCompile(`delegate API\s+(http://\S+)`).FindStringSubmatch(out.String()); m != nil {
			apiURL = m[1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("slipway local did not come up:\n%s", out.String())
		}
	}
	api, err := delegate.New(apiURL, delegate.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	// Paused (SIGSTOP) for 12 s mid-step, past every call's deadline, and
	// let go on: the stage passes with its whole log.
	paused := &stage.Spec{ID: "paused-1", Pool: "kill", Groups: []stage.Group{{Final: true, Steps: []stage.Step{
		{ID: "build", Step: agentapi.Step{Script: "echo start; sleep 3; echo done"}},
	}}}}
	if _, err := api.Create(ctx, paused, 0); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		st, err := api.Status(ctx, paused.ID, -1, 0)
		if err == nil && st.Phase == stage.PhaseRunning {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stage %s not running: %+v, %v", paused.ID, st, err)
		}
	}
	_ = cmd.Process.Signal(syscall.SIGSTOP)
	time.Sleep(12 * time.Second)
	_ = cmd.Process.Signal(syscall.SIGCONT)
	st, err := api.Follow(ctx, paused.ID, nil)
	if err != nil || st.Result != stage.Succeeded {
		t.Fatalf("stage %s after a pause: %+v, %v", paused.ID, st, err)
	}
	var log []byte
	if err := api.FollowLog(ctx, paused.ID, "build", time.Second, func(b []byte) error { log = append(log, b...); return nil }); err != nil || string(log) != "start\ndone\n" {
		t.Fatalf("stage %s's log after a pause: %q, %v", paused.ID, log, err)
	}

	pidFile := filepath.Join(tmp, "sleeper.pid")
	steps := []stage.Step{{ID: "host", Step: agentapi.Step{
		// The sleeper leaves the step's process group, as a daemon would.
		Script: "setsid sleep 300 & echo $! > " + pidFile + "; wait",
	}}}
	docker, _ := executor.NewDockerClient()
	if os.Getenv("DOCKER_HOST") != "" {
		if err := busyboximage.Ensure(context.Background(), docker); err != nil {
			t.Fatal(err)
		}
		steps = append(steps, stage.Step{ID: "box", Step: agentapi.Step{
			Image: busyboximage.Tag, Pull: agentapi.PullNever, Script: "sleep 300",
		}})
	}
	if _, err := api.Create(ctx, &stage.Spec{ID: "kill-1", Pool: "kill", Groups: []stage.Group{{Final: true, Steps: steps}}}, 0); err != nil {
		t.Fatal(err)
	}
	sleeper := 0
	for deadline := time.Now().Add(time.Minute); sleeper == 0; time.Sleep(100 * time.Millisecond) {
		data, _ := os.ReadFile(pidFile)
		sleeper, _ = strconv.Atoi(strings.TrimSpace(string(data)))
		if time.Now().After(deadline) {
			t.Fatalf("the step did not start:\n%s", out.String())
		}
	}
	container := "slipway-kill-1-box"
	if docker != nil && len(steps) > 1 {
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
			if c, err := docker.ContainerInspect(ctx, container); err == nil && c.State.Running {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the container step did not start:\n%s", out.String())
			}
		}
	}
	agents := agenttest.ProcessesUnder(dir)
	if len(agents) == 0 {
		t.Fatal("no agent process found under the runtime's folder")
	}

	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
	// The agents' stop grace (10 s) and a little more.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		var left []string
		if agenttest.Alive(sleeper) {
			left = append(left, "the step's sleeper")
		}
		left = append(left, agenttest.ProcessesUnder(dir)...)
		if docker != nil && len(steps) > 1 {
			if _, err := docker.ContainerInspect(ctx, container); err == nil {
				left = append(left, "container "+container)
			}
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("30 s after slipway local was killed, still there: %v", left)
		}
	}
}
