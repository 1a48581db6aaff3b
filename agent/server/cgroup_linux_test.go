package server_test

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/agent/agenttest"
	"github.com/slipway-ci/slipway/agent/executor"
	"github.com/slipway-ci/slipway/agent/server"
)

// The escapes a hostile step tries: leaving its process group and clearing
// the environment the marker is in. Its cgroup holds it all the same:
// cancel ends it, and what let go of the output dies with the stage.
func TestEscapesDieWithTheirStep(t *testing.T) {
	cg, err := executor.OpenCgroups(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("this Linux machine should let the agent write cgroup v2: %v", err)
	}
	cg.Close()
	a := boundAgent(t, agentapi.Stage{}, server.Config{})
	ctx := agenttest.Context(t)
	dir := t.TempDir()
	escapes := map[string]string{
		"unset":   "setsid sh -c 'unset SLIPWAY_STAGE SLIPWAY_STEP; echo $$ > %s; exec sleep 300' > /dev/null 2>&1 < /dev/null &",
		"env -i":  "env -i setsid sh -c 'echo $$ > %s; exec sleep 300' > /dev/null 2>&1 < /dev/null &",
		"doubled": "setsid sh -c '(setsid sh -c \"echo \\$\\$ > %s; exec sleep 300\" &) ' > /dev/null 2>&1 < /dev/null &",
	}
	for name, escape := range escapes {
		t.Run(name, func(t *testing.T) {
			pidFile := filepath.Join(dir, "cancel-"+strings.ReplaceAll(name, " ", "-"))
			id := "cancel-" + strings.NewReplacer(" ", "", "-", "").Replace(name)
			if _, err := a.Client.StartStep(ctx, stageID, id, &agentapi.Step{Script: fmt.Sprintf(escape, pidFile) + "\nsleep 100"}); err != nil {
				t.Fatal(err)
			}
			pid := readPID(t, pidFile)
			st, err := a.Client.CancelStep(ctx, stageID, id)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := a.Client.WaitStep(ctx, stageID, id, st.BootID, 0); err != nil {
				t.Fatal(err)
			}
			waitGone(t, pid)
		})
	}
	// A daemon that let go of the output outlives its step (later steps may
	// use it), not the stage, however it hid.
	pidFile := filepath.Join(dir, "daemon")
	run(t, a, "daemon", agentapi.Step{Script: fmt.Sprintf(escapes["unset"], pidFile) + "\nsleep 0.2"})
	pid := readPID(t, pidFile)
	// What must not happen can only be watched for a while: the step's end
	// has been answered, and its daemon is still there 100 ms on.
	time.Sleep(100 * time.Millisecond)
	if !alive(pid) {
		t.Fatal("the daemon died with its step")
	}
	if _, err := a.Client.DestroyStage(ctx, stageID); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid)
}
