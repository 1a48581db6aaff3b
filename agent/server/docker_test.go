//go:build linux

package server_test

import (
	"context"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/agent/agenttest"
	"github.com/slipway-ci/slipway/agent/executor"
	"github.com/slipway-ci/slipway/agent/server"
	"github.com/slipway-ci/slipway/internal/busyboximage"
)

func dockerAgent(t *testing.T) (*agenttest.Agent, *executor.Docker) {
	t.Helper()
	d := &executor.Docker{API: agenttest.Docker(t)}
	a := boundAgent(t, agentapi.Stage{
		Env:     map[string]string{"FROM_STAGE": "stage"},
		Secrets: map[string]string{"TOKEN": "container-secret-42"},
	}, server.Config{Docker: d})
	return a, d
}

func box(script string) agentapi.Step {
	return agentapi.Step{Image: busyboximage.Tag, Pull: agentapi.PullNever, Script: script}
}

func TestContainerSteps(t *testing.T) {
	a, d := dockerAgent(t)
	hostname, _ := os.Hostname()
	tests := []struct {
		name      string
		spec      agentapi.Step
		wantState agentapi.StepState
		wantExit  int
		wantLog   string
		wantOut   map[string]string
	}{
		{
			name:      "env, no agent env, masked secret",
			spec:      box(`echo "$FROM_STAGE ${FROM_AGENT:-unset} $TOKEN $STEP_VAR"`),
			wantState: agentapi.StepSucceeded, wantLog: "stage unset ****** step\n",
		},
		{name: "exit code", spec: box("echo bye; exit 5"), wantState: agentapi.StepFailed, wantExit: 5, wantLog: "bye\n"},
		{
			name:      "workspace mounted at the same path",
			spec:      box(`pwd; echo made-in-container > file.txt`),
			wantState: agentapi.StepSucceeded,
		},
		{
			name:      "outputs",
			spec:      box(`echo "IMAGE_OUT=from-container" >> "$SLIPWAY_OUTPUT"`),
			wantState: agentapi.StepSucceeded, wantOut: map[string]string{"IMAGE_OUT": "from-container"},
		},
		{name: "host network by default", spec: box("hostname"), wantState: agentapi.StepSucceeded, wantLog: hostname + "\n"},
		{
			name:      "network none",
			spec:      agentapi.Step{Image: busyboximage.Tag, Pull: agentapi.PullNever, Network: "none", Command: []string{"sh", "-c", "ls /sys/class/net"}},
			wantState: agentapi.StepSucceeded, wantLog: "lo\n",
		},
		{name: "image entrypoint", spec: agentapi.Step{Image: busyboximage.Tag, Pull: agentapi.PullNever}, wantState: agentapi.StepSucceeded},
		{
			name: "a stage volume, then the same volume in the next step",
			spec: func() agentapi.Step {
				s := box(`echo tool > /addon/bin.txt; ls -ld /addon | cut -c1-10`)
				s.Volumes = []agentapi.Volume{{Name: "addon", Path: "/addon"}}
				return s
			}(),
			wantState: agentapi.StepSucceeded, wantLog: "drwxrwxrwx\n",
		},
		{
			name: "the volume keeps what the last step left, and is not in the workspace",
			spec: func() agentapi.Step {
				s := box(`cat /tools/bin.txt; ls "$SLIPWAY_WORKSPACE"`)
				s.Volumes = []agentapi.Volume{{Name: "addon", Path: "/tools"}}
				return s
			}(),
			wantState: agentapi.StepSucceeded, wantLog: "tool\nfile.txt\n",
		},
		{
			// Without privileges a container cannot mount; with them it can.
			name:      "unprivileged",
			spec:      box(`mkdir -p /m && mount -t tmpfs none /m 2>/dev/null && echo mounted || echo refused`),
			wantState: agentapi.StepSucceeded, wantLog: "refused\n",
		},
		{
			// The file the "workspace mounted at the same path" step made is
			// there, and the work dir is relative to the mount.
			name: "workspace mounted at another path too",
			spec: func() agentapi.Step {
				s := box(`pwd; cat ../file.txt; [ "$(cat "$SLIPWAY_WORKSPACE/file.txt")" = made-in-container ] && echo same`)
				s.WorkspaceMount, s.WorkDir = "/harness", "sub"
				return s
			}(),
			wantState: agentapi.StepSucceeded, wantLog: "/harness/sub\nmade-in-container\nsame\n",
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := "c" + string(rune('a'+i))
			spec := tt.spec
			spec.Env = map[string]string{"STEP_VAR": "step"}
			st := run(t, a, id, spec)
			if st.State != tt.wantState {
				t.Fatalf("state %s, want %s (error %q)", st.State, tt.wantState, st.Error)
			}
			if *st.ExitCode != tt.wantExit {
				t.Errorf("exit %d, want %d", *st.ExitCode, tt.wantExit)
			}
			if tt.wantLog != "" {
				if got := logOf(t, a, id); got != tt.wantLog {
					t.Errorf("log %q, want %q", got, tt.wantLog)
				}
			}
			for k, v := range tt.wantOut {
				if st.Outputs[k] != v {
					t.Errorf("output %s = %q, want %q", k, st.Outputs[k], v)
				}
			}
			// The container is gone.
			if _, err := d.API.ContainerInspect(context.Background(), "slipway-"+stageID+"-"+id); !cerrdefs.IsNotFound(err) {
				t.Errorf("container still there: %v", err)
			}
		})
	}
	// A privileged container can mount. Where the engine itself lacks the
	// capabilities to give (this sandbox's dockerd), runc says so: the
	// engine was asked for them either way.
	priv := box(`mkdir -p /m && mount -t tmpfs none /m 2>/dev/null && echo mounted || echo refused`)
	priv.Privileged = true
	st := run(t, a, "privileged", priv)
	switch {
	case st.State == agentapi.StepSucceeded && logOf(t, a, "privileged") == "mounted\n":
	case st.State == agentapi.StepError && strings.Contains(st.Error, "unable to apply caps"):
		t.Logf("this engine cannot run privileged containers: %s", st.Error)
	default:
		t.Errorf("privileged: %s %q %q", st.State, st.Error, logOf(t, a, "privileged"))
	}
	// The host sees what the container wrote in the workspace.
	st = run(t, a, "host-reads", agentapi.Step{Command: []string{"cat", "file.txt"}})
	if got := logOf(t, a, "host-reads"); st.State != agentapi.StepSucceeded || got != "made-in-container\n" {
		t.Fatalf("host step: %s %q", st.State, got)
	}
}

func TestContainerStepCancel(t *testing.T) {
	a, d := dockerAgent(t)
	ctx := agenttest.Context(t)
	st, err := a.Client.StartStep(ctx, stageID, "sleepy", &agentapi.Step{Image: busyboximage.Tag, Pull: agentapi.PullNever, Command: []string{"sleep", "300"}})
	if err != nil {
		t.Fatal(err)
	}
	agenttest.Until(t, time.Minute, "the container running", func() bool {
		c, err := d.API.ContainerInspect(ctx, "slipway-"+stageID+"-sleepy")
		return err == nil && c.State.Running
	})
	canceledAt := time.Now()
	if _, err := a.Client.CancelStep(ctx, stageID, "sleepy"); err != nil {
		t.Fatal(err)
	}
	end, err := a.Client.WaitStep(ctx, stageID, "sleepy", st.BootID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if end.State != agentapi.StepCanceled {
		t.Fatalf("state %s, want canceled", end.State)
	}
	// sleep as PID 1 ignores SIGTERM: the kill after the grace period ends it.
	if took := end.EndedAt.Sub(canceledAt); took > 10*time.Second {
		t.Fatalf("cancel took %s", took)
	}
}

func TestContainerStepOOM(t *testing.T) {
	a, _ := dockerAgent(t)
	// tail keeps its whole input in memory when asked for everything from
	// line 1 of an endless stream.
	st := run(t, a, "hungry", agentapi.Step{
		Image: busyboximage.Tag, Pull: agentapi.PullNever, MemoryBytes: 16 << 20,
		Script: "head -c 200000000 /dev/zero | tail -c 200000000 > /dev/null",
	})
	if st.State != agentapi.StepFailed || !st.OOMKilled {
		t.Fatalf("state %s, oom %v, exit %v, error %q: want failed and OOM killed", st.State, st.OOMKilled, st.ExitCode, st.Error)
	}
}

func TestContainerStepWithMissingImage(t *testing.T) {
	a, _ := dockerAgent(t)
	st := run(t, a, "missing", agentapi.Step{Image: "slipway-no-such-image:1", Pull: agentapi.PullNever, Script: "true"})
	if st.State != agentapi.StepError || !strings.Contains(st.Error, "slipway-no-such-image:1") {
		t.Fatalf("state %s, error %q: want an error naming the image", st.State, st.Error)
	}
}

func TestHostStepsReachTheDockerSocket(t *testing.T) {
	a, _ := dockerAgent(t)
	if host := os.Getenv("DOCKER_HOST"); host != "" && !strings.HasPrefix(host, "unix://") {
		t.Fatalf("DOCKER_HOST %q: the test expects the engine on a unix socket", host)
	}
	script := `sock=${DOCKER_HOST#unix://}; curl -fsS --unix-socket "${sock:-/var/run/docker.sock}" http://docker/_ping`
	st := run(t, a, "ping", agentapi.Step{Script: script})
	if got := logOf(t, a, "ping"); st.State != agentapi.StepSucceeded || got != "OK" {
		t.Fatalf("%s %q", st.State, got)
	}
}

// A step's pull secret reaches the registry as its login, and neither the
// step's environment nor its status.
func TestPullSecretLogsIn(t *testing.T) {
	a, _ := dockerAgent(t)
	var mu sync.Mutex
	var logins []string
	registry := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		logins = append(logins, r.Header.Get("Authorization"))
		mu.Unlock()
		if r.Header.Get("Authorization") == "" {
			w.Header().Set("WWW-Authenticate", `Basic realm="slipway-test"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		http.NotFound(w, r) // no such image: the login is what this test is about
	}))
	t.Cleanup(registry.Close)
	host := strings.TrimPrefix(registry.URL, "http://")
	login := `{"username":"robot","password":"pull-pw-71","serveraddress":"` + host + `"}`
	st := run(t, a, "pull", agentapi.Step{
		Image: host + "/private/tool:1", Pull: agentapi.PullAlways, Script: "true",
		Secrets: map[string]string{"REGISTRY_LOGIN": login}, PullSecret: "REGISTRY_LOGIN",
	})
	mu.Lock()
	seen := strings.Join(logins, " ")
	mu.Unlock()
	if want := "Basic " + base64.StdEncoding.EncodeToString([]byte("robot:pull-pw-71")); !strings.Contains(seen, want) {
		t.Errorf("the registry saw %q, not the login", seen)
	}
	if st.State != agentapi.StepError || strings.Contains(st.Error, "pull-pw-71") {
		t.Errorf("pull of an image the registry lacks: %s %q", st.State, st.Error)
	}
	spec := box(`env | grep -c REGISTRY_LOGIN || true`)
	spec.Secrets, spec.PullSecret = map[string]string{"REGISTRY_LOGIN": login}, "REGISTRY_LOGIN"
	if st := run(t, a, "env", spec); st.State != agentapi.StepSucceeded || logOf(t, a, "env") != "0\n" {
		t.Errorf("the login in the step's environment: %s %q", st.State, logOf(t, a, "env"))
	}
}
