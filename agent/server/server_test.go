package server_test

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/agent/agenttest"
	"github.com/slipway-ci/slipway/agent/client"
	"github.com/slipway-ci/slipway/agent/server"
)

const stageID = "stage-1"

// boundAgent starts an agent bound to stageID with the given stage spec.
func boundAgent(t *testing.T, stage agentapi.Stage, cfg server.Config) *agenttest.Agent {
	t.Helper()
	if cfg.StopGrace == 0 {
		cfg.StopGrace = 500 * time.Millisecond
	}
	cfg.BaseEnv = append(os.Environ(), "FROM_AGENT=agent", "LAYERED=agent")
	a := agenttest.Start(t, cfg)
	stage.ID = stageID
	if _, err := a.Client.BindStage(agenttest.Context(t), &stage); err != nil {
		t.Fatal(err)
	}
	return a
}

func run(t *testing.T, a *agenttest.Agent, id string, spec agentapi.Step) *agentapi.StepStatus {
	t.Helper()
	st, err := a.Client.RunStep(agenttest.Context(t), stageID, id, &spec)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func logOf(t *testing.T, a *agenttest.Agent, id string) string {
	t.Helper()
	var b strings.Builder
	if _, err := a.Client.StreamLogs(agenttest.Context(t), stageID, id, 0, &b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestHostStepResults(t *testing.T) {
	a := boundAgent(t, agentapi.Stage{
		Env:     map[string]string{"LAYERED": "stage", "FROM_STAGE": "stage"},
		Secrets: map[string]string{"STAGE_TOKEN": "stage-secret-value"},
		Files:   []agentapi.File{{Path: "conf/app.txt", Data: []byte("from file\n")}},
	}, server.Config{})
	tests := []struct {
		name      string
		spec      agentapi.Step
		wantState agentapi.StepState
		wantExit  int
		wantLog   string
		wantOut   map[string]string
	}{
		{
			name:      "command succeeds",
			spec:      agentapi.Step{Command: []string{"echo", "hello"}},
			wantState: agentapi.StepSucceeded, wantLog: "hello\n",
		},
		{
			name:      "script fails at first error",
			spec:      agentapi.Step{Script: "echo one\nfalse\necho never"},
			wantState: agentapi.StepFailed, wantExit: 1, wantLog: "one\n",
		},
		{
			name:      "bash pipefail",
			spec:      agentapi.Step{Shell: "bash", Script: "false | true\necho never"},
			wantState: agentapi.StepFailed, wantExit: 1, wantLog: "",
		},
		{
			name:      "exit code",
			spec:      agentapi.Step{Script: "exit 7"},
			wantState: agentapi.StepFailed, wantExit: 7,
		},
		{
			name:      "env layered agent < stage < step",
			spec:      agentapi.Step{Script: `echo "$FROM_AGENT $FROM_STAGE $LAYERED"`, Env: map[string]string{"LAYERED": "step"}},
			wantState: agentapi.StepSucceeded, wantLog: "agent stage step\n",
		},
		{
			name:      "stderr and stdout in order",
			spec:      agentapi.Step{Script: "echo 1; echo 2 >&2; echo 3; echo 4 >&2"},
			wantState: agentapi.StepSucceeded, wantLog: "1\n2\n3\n4\n",
		},
		{
			name:      "files and work dir",
			spec:      agentapi.Step{Script: "cat ../conf/app.txt; pwd | grep -q '/work/sub$' && echo in-sub", WorkDir: "sub"},
			wantState: agentapi.StepSucceeded, wantLog: "from file\nin-sub\n",
		},
		{
			name:      "secrets masked in log and outputs",
			spec:      agentapi.Step{Script: `echo "t=$STAGE_TOKEN s=$STEP_TOKEN"; echo "OUT=x$STEP_TOKEN" >> "$SLIPWAY_OUTPUT"`, Secrets: map[string]string{"STEP_TOKEN": "step-secret"}},
			wantState: agentapi.StepSucceeded, wantLog: "t=****** s=******\n", wantOut: map[string]string{"OUT": "x******"},
		},
		{
			name: "outputs with a multi-line value, filtered by name",
			spec: agentapi.Step{
				Script:  "printf 'A=1\\nB<<EOF\\nline one\\nline two\\nEOF\\nC=3\\n' > \"$SLIPWAY_OUTPUT\"",
				Outputs: []string{"A", "B"},
			},
			wantState: agentapi.StepSucceeded, wantOut: map[string]string{"A": "1", "B": "line one\nline two"},
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := "step-" + strconv.Itoa(i)
			st := run(t, a, id, tt.spec)
			if st.State != tt.wantState {
				t.Fatalf("state %s, want %s (error %q)", st.State, tt.wantState, st.Error)
			}
			if st.ExitCode == nil || *st.ExitCode != tt.wantExit {
				t.Errorf("exit code %v, want %d", st.ExitCode, tt.wantExit)
			}
			if got := logOf(t, a, id); got != tt.wantLog {
				t.Errorf("log %q, want %q", got, tt.wantLog)
			}
			if len(st.Outputs) != len(tt.wantOut) {
				t.Errorf("outputs %v, want %v", st.Outputs, tt.wantOut)
			}
			for k, v := range tt.wantOut {
				if st.Outputs[k] != v {
					t.Errorf("output %s = %q, want %q", k, st.Outputs[k], v)
				}
			}
			if st.BootID != a.Server.BootID() {
				t.Errorf("boot id %q, want %q", st.BootID, a.Server.BootID())
			}
		})
	}
}

func TestCommandNotFoundIsAnError(t *testing.T) {
	a := boundAgent(t, agentapi.Stage{}, server.Config{})
	st := run(t, a, "nope", agentapi.Step{Command: []string{"/no/such/command"}})
	if st.State != agentapi.StepError || !strings.Contains(st.Error, "no such file") {
		t.Fatalf("state %s error %q, want error about the missing command", st.State, st.Error)
	}
}

func TestSecretSplitAcrossWritesIsMasked(t *testing.T) {
	a := boundAgent(t, agentapi.Stage{Secrets: map[string]string{"K": "abcdef123456"}}, server.Config{})
	// The secret reaches the agent in two writes a moment apart.
	st := run(t, a, "split", agentapi.Step{Script: "printf 'key=abcdef'; sleep 0.3; printf '123456 end\\n'"})
	if st.State != agentapi.StepSucceeded {
		t.Fatalf("state %s", st.State)
	}
	if got := logOf(t, a, "split"); got != "key=****** end\n" {
		t.Fatalf("log %q", got)
	}
}

func TestStartIsIdempotent(t *testing.T) {
	a := boundAgent(t, agentapi.Stage{}, server.Config{})
	ctx := agenttest.Context(t)
	spec := agentapi.Step{Script: "echo once >> ../count; sleep 0.2"}
	first, err := a.Client.StartStep(ctx, stageID, "s", &spec)
	if err != nil {
		t.Fatal(err)
	}
	again, err := a.Client.StartStep(ctx, stageID, "s", &spec)
	if err != nil {
		t.Fatal(err)
	}
	if !again.StartedAt.Equal(first.StartedAt) {
		t.Fatalf("second start made a new step: %v vs %v", again.StartedAt, first.StartedAt)
	}
	other := agentapi.Step{Script: "echo different"}
	_, err = a.Client.StartStep(ctx, stageID, "s", &other)
	var apiErr *client.APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 409 || apiErr.Code != agentapi.CodeStepConflict {
		t.Fatalf("different spec: err %v, want 409 step_conflict", err)
	}
	if _, err := a.Client.WaitStep(ctx, stageID, "s", first.BootID, 0); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(a.WorkRoot, stageID, "count"))
	if err != nil {
		t.Fatal(err)
	}
	if string(data) != "once\n" {
		t.Fatalf("the step ran %d times", strings.Count(string(data), "once"))
	}
}

func TestTimeout(t *testing.T) {
	a := boundAgent(t, agentapi.Stage{}, server.Config{})
	st := run(t, a, "slow", agentapi.Step{Command: []string{"sleep", "30"}, TimeoutSeconds: 1})
	if st.State != agentapi.StepTimedOut {
		t.Fatalf("state %s, want timed_out", st.State)
	}
	if took := st.EndedAt.Sub(st.StartedAt); took > 5*time.Second {
		t.Fatalf("timed out after %s", took)
	}
}

func TestLogCapKeepsTheAgentFlat(t *testing.T) {
	const capBytes = 1 << 20
	a := boundAgent(t, agentapi.Stage{}, server.Config{MaxLogBytes: capBytes})
	// 1 GiB of output through the agent; it keeps the first MiB and a marker.
	st := run(t, a, "big", agentapi.Step{Script: "head -c 1073741824 /dev/zero | tr '\\0' x"})
	if st.State != agentapi.StepSucceeded {
		t.Fatalf("state %s: %s", st.State, st.Error)
	}
	log := logOf(t, a, "big")
	if !strings.HasPrefix(log, strings.Repeat("x", capBytes)) {
		t.Fatal("the log does not start with the first MiB of output")
	}
	marker := fmt.Sprintf("[slipway: %d bytes of output dropped", 1<<30-capBytes)
	if !strings.Contains(log[capBytes:], marker) {
		t.Fatalf("log tail %q lacks %q", log[capBytes:], marker)
	}
	if int64(len(log)) != st.LogBytes {
		t.Fatalf("read %d bytes, status says %d", len(log), st.LogBytes)
	}
}

func TestFiftyStepsInParallel(t *testing.T) {
	a := boundAgent(t, agentapi.Stage{}, server.Config{})
	ctx := agenttest.Context(t)
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := range 50 {
		wg.Go(func() {
			id := fmt.Sprintf("p%02d", i)
			st, err := a.Client.RunStep(ctx, stageID, id, &agentapi.Step{Script: fmt.Sprintf("sleep 0.5; echo %d", i)})
			if err != nil {
				errs <- err
				return
			}
			if st.State != agentapi.StepSucceeded {
				errs <- fmt.Errorf("%s: state %s", id, st.State)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i := range 50 {
		if got, want := logOf(t, a, fmt.Sprintf("p%02d", i)), fmt.Sprintf("%d\n", i); got != want {
			t.Errorf("step %d log %q, want %q", i, got, want)
		}
	}
}

func TestTwoPollersBothSeeTheEnd(t *testing.T) {
	a := boundAgent(t, agentapi.Stage{}, server.Config{})
	ctx := agenttest.Context(t)
	st, err := a.Client.StartStep(ctx, stageID, "polled", &agentapi.Step{Script: "sleep 0.5; exit 3"})
	if err != nil {
		t.Fatal(err)
	}
	results := make(chan *agentapi.StepStatus, 2)
	for range 2 {
		go func() {
			end, err := a.Client.WaitStep(ctx, stageID, "polled", st.BootID, 10*time.Second)
			if err != nil {
				t.Error(err)
			}
			results <- end
		}()
	}
	for range 2 {
		end := <-results
		if end == nil || end.State != agentapi.StepFailed || *end.ExitCode != 3 {
			t.Fatalf("poller saw %+v, want failed with exit 3", end)
		}
	}
}

func TestWaitReturnsAfterTheWaitWhileRunning(t *testing.T) {
	a := boundAgent(t, agentapi.Stage{}, server.Config{})
	ctx := agenttest.Context(t)
	if _, err := a.Client.StartStep(ctx, stageID, "long", &agentapi.Step{Command: []string{"sleep", "30"}}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	st, err := a.Client.StepStatus(ctx, stageID, "long", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != agentapi.StepRunning || time.Since(start) < 250*time.Millisecond {
		t.Fatalf("state %s after %s", st.State, time.Since(start))
	}
}

func TestBinding(t *testing.T) {
	a := boundAgent(t, agentapi.Stage{Env: map[string]string{"A": "1"}}, server.Config{})
	ctx := agenttest.Context(t)
	tests := []struct {
		name     string
		stage    agentapi.Stage
		wantCode string
	}{
		{name: "same spec again", stage: agentapi.Stage{ID: stageID, Env: map[string]string{"A": "1"}}},
		{name: "same id, other spec", stage: agentapi.Stage{ID: stageID}, wantCode: agentapi.CodeStageConflict},
		{name: "another stage", stage: agentapi.Stage{ID: "stage-9"}, wantCode: agentapi.CodeStageConflict},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := a.Client.BindStage(ctx, &tt.stage)
			var apiErr *client.APIError
			switch {
			case tt.wantCode == "" && err != nil:
				t.Fatal(err)
			case tt.wantCode != "" && (!errors.As(err, &apiErr) || apiErr.Code != tt.wantCode):
				t.Fatalf("err %v, want code %s", err, tt.wantCode)
			}
		})
	}
	h, err := a.Client.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h.Stage != stageID || h.BootID != a.Server.BootID() || h.OS == "" {
		t.Fatalf("health %+v", h)
	}
}

// Secrets at the limits bind, start and are masked, in their encodings too;
// one byte over is a 400 naming what is too large.
func TestLargeSecrets(t *testing.T) {
	stageSecret := strings.Repeat("stage-secret/", agentapi.MaxSecretBytes/13)
	stepSecret := strings.Repeat("step:secret+", agentapi.MaxSecretBytes/12)
	a := boundAgent(t, agentapi.Stage{Secrets: map[string]string{"BIG": stageSecret}}, server.Config{})
	st := run(t, a, "big", agentapi.Step{
		Script:  `printf '%s\n' "$BIG"; printf '%s' "user:$MINE" | base64 -w0; echo`,
		Secrets: map[string]string{"MINE": stepSecret},
	})
	if st.State != agentapi.StepSucceeded {
		t.Fatalf("state %s (%s)", st.State, st.Error)
	}
	got := logOf(t, a, "big")
	if strings.Contains(got, "stage-secret/stage-secret/") || len(got) > 100 {
		t.Errorf("the log holds a secret: %.200q", got)
	}

	ctx := agenttest.Context(t)
	var apiErr *client.APIError
	over := map[string]string{"A": strings.Repeat("a", agentapi.MaxSecretBytes), "B": strings.Repeat("b", agentapi.MaxSecretBytes),
		"C": strings.Repeat("c", agentapi.MaxSecretBytes), "D": strings.Repeat("d", 100)}
	_, err := a.Client.StartStep(ctx, stageID, "over", &agentapi.Step{Script: "true", Secrets: over})
	if !errors.As(err, &apiErr) || apiErr.Status != 400 || !strings.Contains(apiErr.Message, "together are over 131072") {
		t.Errorf("the stage's and the step's secrets over the limit: %v", err)
	}
	_, err = a.Client.StartStep(ctx, stageID, "one", &agentapi.Step{Script: "true", Secrets: map[string]string{"HUGE": strings.Repeat("h", agentapi.MaxSecretBytes+1)}})
	if !errors.As(err, &apiErr) || apiErr.Status != 400 || !strings.Contains(apiErr.Message, "HUGE: 32769 bytes") {
		t.Errorf("one secret over the limit: %v", err)
	}
}

// A bad line or an outputs file over the limit costs only what is wrong:
// the good outputs are kept, the rest is named in the status.
func TestOutputsKeepTheGoodLines(t *testing.T) {
	a := boundAgent(t, agentapi.Stage{}, server.Config{})
	st := run(t, a, "bad-line", agentapi.Step{Script: `printf 'A=1\nnot an output\nB=2\n' > "$SLIPWAY_OUTPUT"`})
	if st.State != agentapi.StepSucceeded || st.Outputs["A"] != "1" || st.Outputs["B"] != "2" || !strings.Contains(st.Error, "line 2") {
		t.Errorf("a malformed line: %s %v %q", st.State, st.Outputs, st.Error)
	}
	st = run(t, a, "too-big", agentapi.Step{Script: `{ echo A=1; head -c 1100000 /dev/zero | tr '\0' x | fold -w 1000 | sed 's/^/F=/'; echo Z=9; } > "$SLIPWAY_OUTPUT"`})
	if st.State != agentapi.StepSucceeded || st.Outputs["A"] != "1" || st.Outputs["Z"] != "" || !strings.Contains(st.Error, "over 1048576 bytes") {
		t.Errorf("outputs over the limit: %s %d outputs, %q", st.State, len(st.Outputs), st.Error)
	}
}

// What a step writes to its env file ($SLIPWAY_ENV, or the name the step
// gives it) is the env of every step that starts after it, over the step's
// own env; a step does not see its own exports, and the outputs stay apart.
func TestExportsReachLaterSteps(t *testing.T) {
	a := boundAgent(t, agentapi.Stage{Env: map[string]string{"TAG": "from-stage"}}, server.Config{})
	st := run(t, a, "export", agentapi.Step{
		Script:     `echo "export TAG=v1.2" >> "$DRONE_ENV"; printf 'NOTES<<EOF\ntwo\nlines\nEOF\n' >> "$SLIPWAY_ENV"; echo "TAG=$TAG"`,
		EnvFileVar: "DRONE_ENV",
	})
	if st.State != agentapi.StepSucceeded || st.Error != "" || len(st.Outputs) != 0 || logOf(t, a, "export") != "TAG=from-stage\n" {
		t.Fatalf("export: %s %q %v %q", st.State, st.Error, st.Outputs, logOf(t, a, "export"))
	}
	st = run(t, a, "later", agentapi.Step{Script: `echo "$TAG $NOTES"`, Env: map[string]string{"TAG": "from-step"}})
	if got := logOf(t, a, "later"); st.State != agentapi.StepSucceeded || got != "v1.2 two\nlines\n" {
		t.Errorf("the next step: %s %q", st.State, got)
	}
	st = run(t, a, "bad-export", agentapi.Step{Script: `echo "not a line" >> "$SLIPWAY_ENV"`})
	if st.State != agentapi.StepSucceeded || !strings.Contains(st.Error, "env file") {
		t.Errorf("a bad env file: %s %q", st.State, st.Error)
	}
	st = run(t, a, "huge-export", agentapi.Step{Script: `head -c 1100000 /dev/zero | tr '\0' x | fold -w 1000 | sed 's/^/BIG=/' > "$SLIPWAY_ENV"`})
	if st.State != agentapi.StepSucceeded || !strings.Contains(st.Error, "the env file is over 1048576 bytes") {
		t.Errorf("an env file over the limit: %s %q", st.State, st.Error)
	}
	if st := run(t, a, "after-huge", agentapi.Step{Script: `echo "${BIG:-none}"`}); logOf(t, a, "after-huge") != "none\n" {
		t.Errorf("an env file over the limit was exported: %s %q", st.State, logOf(t, a, "after-huge"))
	}
}

// A secret output comes back sealed to the stage creator's key, opens
// with its private key only as that step's output, and is masked in the
// steps after it.
func TestSecretOutputsAreSealed(t *testing.T) {
	a := boundAgent(t, agentapi.Stage{}, server.Config{})
	key, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	st := run(t, a, "mint", agentapi.Step{
		Script:        `printf 'TOKEN=minted-9f3b7c\nPLAIN=seen\n' >> "$SLIPWAY_OUTPUT"`,
		SecretOutputs: []string{"TOKEN"}, OutputKey: key.PublicKey().Bytes(),
	})
	if st.State != agentapi.StepSucceeded || st.Error != "" || st.Outputs["PLAIN"] != "seen" || !strings.HasPrefix(st.Outputs["TOKEN"], agentapi.SealedPrefix) {
		t.Fatalf("mint: %s %q %v", st.State, st.Error, st.Outputs)
	}
	if got, err := agentapi.OpenOutput(key, stageID, "mint", "TOKEN", st.Outputs["TOKEN"]); err != nil || got != "minted-9f3b7c" {
		t.Errorf("open: %q %v", got, err)
	}
	if _, err := agentapi.OpenOutput(key, stageID, "mint", "PLAIN", st.Outputs["TOKEN"]); err == nil {
		t.Error("the sealed value opens as another output")
	}
	other, _ := ecdh.X25519().GenerateKey(rand.Reader)
	if _, err := agentapi.OpenOutput(other, stageID, "mint", "TOKEN", st.Outputs["TOKEN"]); err == nil {
		t.Error("the sealed value opens with another key")
	}
	run(t, a, "use", agentapi.Step{Script: `echo "using minted-9f3b7c"`})
	if got := logOf(t, a, "use"); got != "using ******\n" {
		t.Errorf("a later step's log: %q", got)
	}
	if _, err := a.Client.RunStep(agenttest.Context(t), stageID, "no-key", &agentapi.Step{Script: "true", SecretOutputs: []string{"TOKEN"}}); err == nil || !strings.Contains(err.Error(), "output_key: 0 bytes") {
		t.Errorf("secret outputs without a key: %v", err)
	}
}

// Stage folders an earlier agent run left go when an agent starts, and
// other stages' at the next bind.
func TestStaleStageFoldersGo(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"left-by-a-crash/work", "another/steps"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	a := agenttest.Start(t, server.Config{WorkRoot: root})
	if entries, _ := os.ReadDir(root); len(entries) != 0 {
		t.Errorf("after the start: %v", entries)
	}
	if err := os.MkdirAll(filepath.Join(root, "since", "work"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Client.BindStage(agenttest.Context(t), &agentapi.Stage{ID: stageID}); err != nil {
		t.Fatal(err)
	}
	var names []string
	entries, _ := os.ReadDir(root)
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{stageID}) {
		t.Errorf("after binding: %v, want only the bound stage's folder", names)
	}
}

// Steps that bring new secrets at the same moment each get a matcher with
// theirs, and a step after them is masked for all of them.
func TestConcurrentStepsAddSecrets(t *testing.T) {
	a := boundAgent(t, agentapi.Stage{}, server.Config{})
	ctx := agenttest.Context(t)
	var wg sync.WaitGroup
	for i := range 5 {
		wg.Go(func() {
			id := fmt.Sprintf("s%d", i)
			spec := agentapi.Step{Script: `echo "$MINE"`, Secrets: map[string]string{"MINE": fmt.Sprintf("concurrent-secret-%d", i)}}
			st, err := a.Client.RunStep(ctx, stageID, id, &spec)
			if err != nil || st.State != agentapi.StepSucceeded {
				t.Errorf("%s: %+v %v", id, st, err)
			}
		})
	}
	wg.Wait()
	for i := range 5 {
		if got := logOf(t, a, fmt.Sprintf("s%d", i)); got != "******\n" {
			t.Errorf("s%d printed its own secret: %q", i, got)
		}
	}
	run(t, a, "after", agentapi.Step{Script: `for i in 0 1 2 3 4; do echo concurrent-secret-$i; done`})
	if got := logOf(t, a, "after"); strings.Contains(got, "concurrent-secret") {
		t.Errorf("a later step printed earlier steps' secrets: %q", got)
	}
}

// The agent bounds what anyone who reaches its port can make it hold: its
// open connections (counted before the TLS handshake: the next waits until
// one closes), and a request's headers.
func TestConnectionsAndHeadersAreBounded(t *testing.T) {
	a := agenttest.Start(t, server.Config{})
	ctx := agenttest.Context(t)
	// Every slot held by a socket that says nothing (each is cut off after
	// the header timeout, 10 s, and frees its slot then).
	conns := make([]net.Conn, 0, server.MaxConnections)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range server.MaxConnections {
		c, err := net.Dial("tcp", a.Addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	waitCtx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	waiting := a.NewClient(t, a.Addr)
	if _, err := waiting.Health(waitCtx); err == nil {
		t.Fatal("a connection past the bound was served")
	}
	// Its connection waits in the listen queue (Go's transport goes on
	// dialling for the next request) and is served once a slot is free.
	start := time.Now()
	conns[0].Close()
	conns = conns[1:]
	if _, err := waiting.Health(ctx); err != nil || time.Since(start) > 5*time.Second {
		t.Fatalf("once a connection closed: %v after %s", err, time.Since(start))
	}

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+a.Addr+"/v1/health", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Padding", strings.Repeat("x", 128<<10))
	waiting.Close() // its slot, for the next
	resp, err := a.HTTPClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("128 KiB of headers: %d", resp.StatusCode)
	}
}
