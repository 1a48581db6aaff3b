package server_test

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/agent/agenttest"
	"github.com/slipway-ci/slipway/agent/server"
)

// busyMount makes dir impossible to remove, even as root: a file system
// mounted on it (rmdir answers EBUSY) until the test ends. It needs root:
// skipped without, except in CI, where it fails.
func busyMount(t *testing.T, dir string) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("a folder that cannot be removed needs root to mount on it, as CI has")
		}
		t.Skip("a folder that cannot be removed needs root to mount on it")
	}
	if err := syscall.Mount("slipway-test", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount on %s: %v", dir, err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
}

// A stage folder that cannot be removed (it may hold the steps' raw
// outputs) is said in the destroy's usage and the agent's log, with the
// stage's secrets masked, and does not fail the destroy.
func TestStageFolderThatCannotBeRemoved(t *testing.T) {
	logs := &agenttest.Buffer{}
	a := boundAgent(t, agentapi.Stage{Secrets: map[string]string{"TOKEN": "d1r-s3cret"}}, server.Config{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if st := run(t, a, "build", agentapi.Step{Script: "mkdir held"}); st.State != agentapi.StepSucceeded {
		t.Fatalf("step %+v", st)
	}
	busyMount(t, filepath.Join(a.WorkRoot, stageID, "work", "held"))
	usage, err := a.Client.DestroyStage(agenttest.Context(t), stageID)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(usage.Leftover, "busy") || !strings.Contains(logs.String(), "the stage folder could not be removed") {
		t.Fatalf("usage %+v; log:\n%s", usage, logs)
	}
}

// A step whose raw outputs cannot be removed says so in its error.
func TestStepOutputsThatCannotBeRemoved(t *testing.T) {
	a := boundAgent(t, agentapi.Stage{}, server.Config{})
	ctx := agenttest.Context(t)
	if _, err := a.Client.StartStep(ctx, stageID, "slow", &agentapi.Step{Script: "sleep 1"}); err != nil {
		t.Fatal(err)
	}
	outputs := filepath.Join(a.WorkRoot, stageID, "steps", "slow.outputs")
	agenttest.Until(t, 10*time.Second, "the step's outputs folder", func() bool { _, err := os.Stat(outputs); return err == nil })
	busyMount(t, outputs)
	st, err := a.Client.WaitStep(ctx, stageID, "slow", "", 0)
	if err != nil || !strings.Contains(st.Error, "the step's raw outputs could not be removed") {
		t.Fatalf("step %+v, %v", st, err)
	}
}
