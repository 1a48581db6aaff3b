package stagecli_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/agent/agenttest"
	"github.com/slipway-ci/slipway/internal/delegate"
	"github.com/slipway-ci/slipway/internal/local"
	"github.com/slipway-ci/slipway/internal/local/localtest"
	"github.com/slipway-ci/slipway/internal/stage"
	"github.com/slipway-ci/slipway/internal/stagecli"
)

// deployment is one slipway local runtime for the package's tests.
func deployment(t *testing.T) *delegate.Client {
	t.Helper()
	_, api := localtest.Deployment(t, local.LocalPool("cli", 2, 3))
	return api
}

func TestCommands(t *testing.T) {
	api := deployment(t)
	env := func(json bool) (*stagecli.Env, *agenttest.Buffer) {
		out := &agenttest.Buffer{}
		return &stagecli.Env{API: api, Out: out, JSON: json, LogPoll: 50 * time.Millisecond,
			Getenv: func(name string) string { return map[string]string{"TOKEN": "tok-9f8e7d6c"}[name] }}, out
	}
	ctx := context.Background()
	run := func(t *testing.T, e *stagecli.Env, o stagecli.RunOptions) int {
		t.Helper()
		spec, err := o.Spec(e.Getenv)
		if err != nil {
			t.Fatal(err)
		}
		code, err := stagecli.Run(ctx, e, spec)
		if err != nil {
			t.Fatal(err)
		}
		return code
	}

	t.Run("passing, with a secret", func(t *testing.T) {
		e, out := env(false)
		code := run(t, e, stagecli.RunOptions{ID: "cli-pass", Pool: "cli", Env: []string{"WHO=world"}, Secrets: []string{"TOK=env:TOKEN"},
			Steps: []string{`echo "hello $WHO"; echo "token $TOK"`, `echo "V=7" >> "$SLIPWAY_OUTPUT"; printf 'no newline'`}})
		got := out.String()
		for _, want := range []string{"[step-1] hello world\n", "[step-1] token ******\n", "[step-2] no newline\n",
			"stage cli-pass: succeeded\n", "step-2               succeeded, exit code 0", "timings from the create: a VM after "} {
			if !strings.Contains(got, want) {
				t.Errorf("output lacks %q", want)
			}
		}
		if code != stagecli.ExitSucceeded || strings.Contains(got, "tok-9f8e7d6c") {
			t.Errorf("exit %d, output:\n%s", code, got)
		}
		// "released" comes after the logs' last lines, not among them.
		if last, rel := strings.LastIndex(got, "[step-"), strings.Index(got, "stage cli-pass: released"); rel < last {
			t.Errorf("released at %d, a log line at %d:\n%s", rel, last, got)
		}
		// The released stage's log, read back whole.
		e, out = env(false)
		if code, err := stagecli.Logs(ctx, e, "cli-pass", "step-1", false); err != nil || code != 0 || out.String() != "hello world\ntoken ******\n" {
			t.Errorf("logs after the release: %d %v %q", code, err, out.String())
		}
		e, out = env(false)
		if code, err := stagecli.Status(ctx, e, "cli-pass"); err != nil || code != 0 || !strings.Contains(out.String(), "cli-pass: succeeded") {
			t.Errorf("status: %d %v %q", code, err, out.String())
		}
	})

	t.Run("failing, as JSON", func(t *testing.T) {
		e, out := env(true)
		code := run(t, e, stagecli.RunOptions{ID: "cli-fail", Pool: "cli", Steps: []string{"exit 3", "echo never"}})
		var st stage.Status
		if err := json.Unmarshal([]byte(out.String()), &st); err != nil {
			t.Fatalf("--output json is not one JSON document: %v\n%s", err, out.String())
		}
		if code != stagecli.ExitFailed || st.Result != stage.Failed || st.Groups[1].Steps[0].State != stage.StateSkipped {
			t.Errorf("exit %d, %+v", code, st)
		}
	})

	t.Run("Ctrl-C cancels and waits for the release", func(t *testing.T) {
		e, out := env(false)
		ctx, cancel := context.WithCancel(ctx)
		go func() {
			for deadline := time.Now().Add(30 * time.Second); !strings.Contains(out.String(), "[step-1] started"); {
				if time.Now().After(deadline) {
					t.Error("the step's log did not show within 30 s")
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			cancel()
		}()
		spec, _ := (&stagecli.RunOptions{ID: "cli-interrupt", Pool: "cli", Steps: []string{"echo started; sleep 60"}}).Spec(e.Getenv)
		code, err := stagecli.Run(ctx, e, spec)
		if err != nil || code != stagecli.ExitStopped {
			t.Fatalf("exit %d, %v\n%s", code, err, out.String())
		}
		st, err := api.Status(context.Background(), "cli-interrupt", -1, 0)
		if err != nil || st.Phase != stage.PhaseReleased || st.Result != stage.Canceled {
			t.Fatalf("after Ctrl-C: %+v %v", st, err)
		}
	})

	t.Run("failed tests", func(t *testing.T) {
		e, out := env(false)
		spec := &stage.Spec{ID: "cli-tests", Pool: "cli", Groups: []stage.Group{{Final: true, Steps: []stage.Step{{ID: "unit", Step: agentapi.Step{
			Script:  `echo '<testsuite name="s"><testcase name="ok" classname="c"/><testcase name="bad" classname="c"><failure message="want 1, got 2"/></testcase></testsuite>' > TEST-s.xml; exit 1`,
			Reports: []string{"TEST-*.xml"},
		}}}}}}
		code, err := stagecli.Run(ctx, e, spec)
		if err != nil || code != stagecli.ExitFailed {
			t.Fatalf("exit %d, %v", code, err)
		}
		for _, want := range []string{"tests of unit: 2, 1 failed, 0 skipped", "  FAIL c > bad\n       want 1, got 2\n"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("output lacks %q:\n%s", want, out.String())
			}
		}
	})

	t.Run("live view", func(t *testing.T) {
		e, out := env(false)
		e.Live = true
		code := run(t, e, stagecli.RunOptions{ID: "cli-live", Pool: "cli", Steps: []string{"echo live one; sleep 1; echo live two"}})
		got := out.String()
		for _, want := range []string{"[step-1] live one", "[step-1] live two", "stage cli-live on vm-", ": running step-1", "stage cli-live: succeeded\n"} {
			if !strings.Contains(got, want) {
				t.Errorf("the live view lacks %q:\n%q", want, got)
			}
		}
		if code != 0 {
			t.Errorf("exit %d", code)
		}
	})

	t.Run("cancel and pools", func(t *testing.T) {
		if _, err := api.Create(ctx, &stage.Spec{ID: "cli-cancel", Pool: "cli"}, 0); err != nil {
			t.Fatal(err)
		}
		e, out := env(false)
		if code, err := stagecli.Cancel(ctx, e, "cli-cancel", true); err != nil || code != 0 || out.String() != "stage cli-cancel: released, canceled\n" {
			t.Errorf("cancel: %d %v %q", code, err, out.String())
		}
		e, out = env(false)
		if code, err := stagecli.List(ctx, e, time.Hour, "cli", 100); err != nil || code != 0 ||
			!strings.Contains(out.String(), "STAGE") || !strings.Contains(out.String(), "cli-pass") || !strings.Contains(out.String(), "canceled") {
			t.Errorf("list: %d %v\n%s", code, err, out.String())
		}
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		if len(lines) < 2 || !strings.HasPrefix(lines[1], "cli-cancel ") {
			t.Errorf("list: the newest first:\n%s", out.String())
		}
		e, out = env(false)
		if code, err := stagecli.Pools(ctx, e); err != nil || code != 0 || !strings.Contains(out.String(), "POOL  IDLE") || !strings.Contains(out.String(), "cli") {
			t.Errorf("pools: %d %v\n%s", code, err, out.String())
		}
	})
}

func TestRunOptions(t *testing.T) {
	getenv := func(name string) string { return map[string]string{"SET": "v"}[name] }
	_, err := (&stagecli.RunOptions{Env: []string{"novalue"}, Secrets: []string{"A=plain", "B=env:UNSET", "C=env:SET"}}).Spec(getenv)
	for _, want := range []string{"--pool: required", "--step or --file: give the stage's steps", `--env "novalue"`, `--secret "A": want NAME=env:VARIABLE`, "--secret B: the variable UNSET"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
	if err != nil && strings.Contains(err.Error(), "plain") {
		t.Error("the error echoes a secret's value")
	}
	spec, err := (&stagecli.RunOptions{Pool: "p", Steps: []string{"a", "b"}, Secrets: []string{"C=env:SET"}}).Spec(getenv)
	if err != nil || len(spec.Groups) != 2 || !spec.Groups[1].Final || spec.Groups[0].Final || spec.Secrets["C"] != "v" || !strings.HasPrefix(spec.ID, "run-") {
		t.Errorf("spec %+v %v", spec, err)
	}
	spec, err = (&stagecli.RunOptions{File: "testdata/stage.yaml", Pool: "other", ID: "from-file"}).Spec(getenv)
	if err != nil || spec.Pool != "other" || spec.ID != "from-file" || len(spec.Groups) != 2 {
		t.Errorf("from a file: %+v %v", spec, err)
	}
	if _, err := (&stagecli.RunOptions{File: "testdata/stage.yaml", Steps: []string{"x"}}).Spec(getenv); err == nil {
		t.Error("--file and --step were taken together")
	}
	for result, code := range map[string]int{stage.Succeeded: 0, stage.Failed: 1, stage.Canceled: 2, stage.TimedOut: 2, stage.Errored: 3} {
		if stagecli.ExitCode(result) != code {
			t.Errorf("exit code of %s: %d", result, stagecli.ExitCode(result))
		}
	}
}

// Interrupted while its create is in flight, run cancels the id it chose:
// the create may have reached the API, and nobody would watch that stage.
func TestInterruptedCreateIsCanceled(t *testing.T) {
	var deleted atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodPost:
			// The create hangs until the client gives up (the server hears
			// of it once the body is read).
			_, _ = io.Copy(io.Discard, r.Body)
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
		case http.MethodDelete:
			deleted.Store(r.URL.Path)
			w.WriteHeader(http.StatusAccepted)
			_, _ = w.Write([]byte(`{"id":"run-x","phase":"releasing","result":"canceled","version":2}`))
		}
	}))
	defer srv.Close()
	api, err := delegate.New(srv.URL, delegate.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	out := &agenttest.Buffer{}
	code, err := stagecli.Run(ctx, &stagecli.Env{API: api, Out: out}, &stage.Spec{ID: "run-x", Pool: "p"})
	if code != stagecli.ExitError || err == nil {
		t.Errorf("exit %d, %v", code, err)
	}
	if got, _ := deleted.Load().(string); got != "/v1/stages/run-x" {
		t.Errorf("canceled %q, want the stage it was creating; output:\n%s", got, out)
	}
}
