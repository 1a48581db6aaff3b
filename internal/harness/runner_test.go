package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/agent/agenttest"
	"github.com/slipway-ci/slipway/internal/busyboximage"
	"github.com/slipway-ci/slipway/internal/local"
	"github.com/slipway-ci/slipway/internal/local/localtest"
	"github.com/slipway-ci/slipway/internal/stage"
)

// fakeLogService records what the runner sends to the Harness log service.
type fakeLogService struct {
	token string
	mu    sync.Mutex
	calls []string            // "METHOD route key"
	lines map[string][]Line   // streamed, by key
	blobs map[string][]string // uploaded messages, by key
	bad   []string            // calls without the token
}

func (f *fakeLogService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := r.URL.Query().Get("key")
	f.calls = append(f.calls, r.Method+" "+r.URL.Path+" "+key)
	if r.Header.Get("X-Harness-Token") != f.token || r.URL.Query().Get("accountID") != "kmpySmUISimoRrJL6NL73w" {
		f.bad = append(f.bad, r.Method+" "+r.URL.String())
	}
	body, _ := io.ReadAll(r.Body)
	switch {
	case r.Method == http.MethodPut && r.URL.Path == "/stream":
		var lines []Line
		if err := json.Unmarshal(body, &lines); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		f.lines[key] = append(f.lines[key], lines...)
	case r.Method == http.MethodPost && r.URL.Path == "/blob":
		for _, l := range bytes.Split(bytes.TrimSpace(body), []byte("\n")) {
			var line Line
			if err := json.Unmarshal(l, &line); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			f.blobs[key] = append(f.blobs[key], line.Message)
		}
	}
	w.WriteHeader(http.StatusOK)
}

func (f *fakeLogService) streamed(key string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for _, l := range f.lines[key] {
		b.WriteString(l.Message)
	}
	return b.String()
}

// post sends body to the runner and decodes its answer into out; the
// answer must have the shape of the testdata file shape, when given.
func post(t testing.TB, url string, body []byte, out any, shape string) int {
	t.Helper()
	resp, err := http.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if shape != "" {
		checkShape(t, data, shape)
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s: %v: %s", url, err, data)
		}
	}
	return resp.StatusCode
}

// checkShape fails the test unless every field of the answer is one the
// runner's own answer (the testdata file) has, with the same JSON type.
func checkShape(t testing.TB, answer []byte, fixtureName string) {
	t.Helper()
	var got, want any
	if err := json.Unmarshal(answer, &got); err != nil {
		t.Fatalf("the answer is not JSON: %v: %s", err, answer)
	}
	if err := json.Unmarshal(fixture(t, fixtureName, nil), &want); err != nil {
		t.Fatal(err)
	}
	var walk func(path string, got, want any)
	walk = func(path string, got, want any) {
		switch g := got.(type) {
		case nil:
			return // null stands for any absent value
		case map[string]any:
			w, ok := want.(map[string]any)
			if !ok {
				t.Errorf("%s %s: an object, the runner's is %T", fixtureName, path, want)
				return
			}
			for k, v := range g {
				wv, ok := w[k]
				if !ok {
					t.Errorf("%s: the runner's answer has no %s.%s", fixtureName, path, k)
					continue
				}
				walk(path+"."+k, v, wv)
			}
		case []any:
			w, ok := want.([]any)
			if !ok || len(w) == 0 {
				t.Errorf("%s %s: an array, the runner's is %T", fixtureName, path, want)
				return
			}
			for i, v := range g {
				walk(fmt.Sprintf("%s[%d]", path, i), v, w[0])
			}
		default:
			if fmt.Sprintf("%T", got) != fmt.Sprintf("%T", want) {
				t.Errorf("%s %s: %T, the runner's is %T", fixtureName, path, got, want)
			}
		}
	}
	walk("", got, want)
}

type runnerError struct {
	Message string `json:"error_msg"`
	Code    int    `json:"code"`
}

// TestDropIn drives the runner as the Harness delegate does, in front of
// slipway local, with a stand-in for the Harness log service.
func TestDropIn(t *testing.T) {
	agenttest.Docker(t) // the busybox image, for the container step
	rt, api := localtest.Deployment(t, local.LocalPool("linux", 1, 2))
	ctx := context.Background()
	logs := &fakeLogService{token: "log-token-5d1c", lines: map[string][]Line{}, blobs: map[string][]string{}}
	logSrv := httptest.NewServer(logs)
	t.Cleanup(logSrv.Close)
	runnerLog := &agenttest.Buffer{}
	srv := httptest.NewServer((&Runner{API: api, LogPoll: 50 * time.Millisecond, Log: slogTo(runnerLog)}).Handler())
	t.Cleanup(srv.Close)

	t.Run("healthz and pool_owner", func(t *testing.T) {
		resp, err := http.Get(srv.URL + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "OK" {
			t.Errorf("healthz: %q", body)
		}
		var owner struct{ Owner bool }
		if code := post(t, srv.URL+"/pool_owner?pool=linux", nil, &owner, ""); code != 200 || !owner.Owner {
			t.Errorf("pool_owner linux: %d %+v", code, owner)
		}
		if code := post(t, srv.URL+"/pool_owner?pool=windows", nil, &owner, ""); code != 200 || owner.Owner {
			t.Errorf("pool_owner windows: %d %+v", code, owner)
		}
		var e runnerError
		if code := post(t, srv.URL+"/pool_owner", nil, &e, "error_response.json"); code != 400 || e.Code != 400 || e.Message != "mandatory URL parameter 'pool' is missing" {
			t.Errorf("pool_owner without pool: %d %+v", code, e)
		}
	})

	fill := map[string]string{"pool": "linux", "secret": testSecret, "log_url": logSrv.URL, "log_token": logs.token}
	var setup SetupResponse
	if code := post(t, srv.URL+"/setup", fixture(t, "setup.json", fill), &setup, "setup_response.json"); code != 200 || setup.InstanceID == "" {
		t.Fatalf("setup: %d %+v\n%s", code, setup, runnerLog)
	}
	st, err := api.Status(ctx, "pZs1Hw3tTc2Qx9Lk0aB7_w", 0, 0)
	if err != nil || st.Timings.BoundAt == nil || st.VM != setup.InstanceID {
		t.Fatalf("after setup the stage is %+v (%v)", st, err)
	}

	step := func(t *testing.T, id, script string, edit func(*StepRequest)) (int, *PollStepResponse, runnerError) {
		t.Helper()
		r := stepFixture(t, id, script)
		r.InstanceID = setup.InstanceID
		if edit != nil {
			edit(r)
		}
		body, _ := json.Marshal(r)
		resp, err := http.Post(srv.URL+"/step", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		var poll PollStepResponse
		var e runnerError
		if resp.StatusCode == 200 {
			checkShape(t, data, "step_response.json")
			_ = json.Unmarshal(data, &poll)
		} else {
			checkShape(t, data, "error_response.json")
			_ = json.Unmarshal(data, &e)
		}
		return resp.StatusCode, &poll, e
	}

	t.Run("a bash step with an output variable and a secret", func(t *testing.T) {
		code, poll, e := step(t, "build", `echo "hello from $HARNESS_STEP"; echo "token $TOKEN"; cat .netrc; VERSION=1.2.3`, nil)
		if code != 200 || !poll.Exited || poll.ExitCode != 0 || poll.Error != "" || poll.Outputs["VERSION"] != "1.2.3" {
			t.Fatalf("%d %+v %+v", code, poll, e)
		}
		got := logs.streamed("kmpySmUISimoRrJL6NL73w/build")
		for _, want := range []string{"hello from build\n", "token ******\n", "machine git.example login robot\n"} {
			if !strings.Contains(got, want) {
				t.Errorf("the log service got %q, lacking %q", got, want)
			}
		}
		logs.mu.Lock()
		blob := strings.Join(logs.blobs["kmpySmUISimoRrJL6NL73w/build"], "")
		logs.mu.Unlock()
		if blob != got {
			t.Errorf("uploaded %q, streamed %q", blob, got)
		}
	})

	t.Run("a failing step gives its exit code", func(t *testing.T) {
		report := `<testsuite name="calc" tests="2" failures="1"><testcase classname="calc.AddTest" name="adds" time="0.01"/>` +
			`<testcase classname="calc.AddTest" name="overflows" time="0.02"><failure message="want 0, got 1"/></testcase></testsuite>`
		code, poll, e := step(t, "fail", "mkdir -p reports; echo '"+report+"' > reports/TEST-calc.xml; echo failing; exit 3",
			func(r *StepRequest) { r.Step.OutputVars = nil })
		if code != 200 || !poll.Exited || poll.ExitCode != 3 {
			t.Fatalf("%d %+v %+v", code, poll, e)
		}
		// Harness's test tab needs its Test Intelligence service: the
		// reports' summary goes to the step's log instead.
		got := logs.streamed("kmpySmUISimoRrJL6NL73w/fail")
		if want := "failing\nSlipway: tests 2, failed 1, skipped 0, 0.0s\n  FAILED calc.AddTest.overflows: want 0, got 1\n"; got != want {
			t.Errorf("log %q, want %q", got, want)
		}
	})

	t.Run("a secret in the script is masked and kept out of Slipway's records", func(t *testing.T) {
		code, poll, e := step(t, "secret", "echo 'the token is "+testSecret+"'", func(r *StepRequest) { r.Step.OutputVars = nil })
		if code != 200 || poll.ExitCode != 0 {
			t.Fatalf("%d %+v %+v", code, poll, e)
		}
		if got := logs.streamed("kmpySmUISimoRrJL6NL73w/secret"); !strings.HasPrefix(got, "the token is ******\nSlipway: tests ") {
			t.Errorf("log %q", got)
		}
	})

	t.Run("a container step", func(t *testing.T) {
		code, poll, e := step(t, "container", "echo in a container at $(pwd); head -c 7 .netrc; echo; VERSION=c1", func(r *StepRequest) {
			r.Step.Image, r.Step.Pull, r.Step.Network = busyboximage.Tag, "Never", "drone"
			r.Step.Run.Entrypoint = []string{"sh", "-c"}
			r.Step.Volumes = []VolumeMount{{Name: "harness", Path: "/harness"}}
			r.Step.WorkingDir = "/harness"
		})
		if code != 200 || poll.ExitCode != 0 || poll.Outputs["VERSION"] != "c1" {
			t.Fatalf("%d %+v %+v", code, poll, e)
		}
		if got := logs.streamed("kmpySmUISimoRrJL6NL73w/container"); !strings.HasPrefix(got, "in a container at /harness\nmachine\nSlipway: tests ") {
			t.Errorf("log %q", got)
		}
	})

	t.Run("a step that does not map is refused by field", func(t *testing.T) {
		code, _, e := step(t, "bg", "sleep 1", func(r *StepRequest) { r.Step.Detach = Unsupported(`true`) })
		if code != 400 || e.Code != 400 || !strings.Contains(e.Message, "start_step_request.detach: not supported") {
			t.Fatalf("%d %+v", code, e)
		}
	})

	t.Run("a retried step awaits the first", func(t *testing.T) {
		code, poll, _ := step(t, "build", "echo never runs", nil)
		if code != 200 || poll.Outputs["VERSION"] != "1.2.3" {
			t.Fatalf("%d %+v", code, poll)
		}
	})

	if code := post(t, srv.URL+"/destroy", fixture(t, "destroy.json", map[string]string{"pool": "linux", "instance": setup.InstanceID}), nil, ""); code != 200 {
		t.Fatalf("destroy: %d\n%s", code, runnerLog)
	}
	st, err = api.Status(ctx, "pZs1Hw3tTc2Qx9Lk0aB7_w", 0, 0)
	if err != nil || st.Phase != stage.PhaseReleased {
		t.Fatalf("after destroy the stage is %+v (%v)", st, err)
	}
	if code, _, e := step(t, "late", "true", func(r *StepRequest) { r.Step.OutputVars = nil }); code != 404 || !strings.Contains(e.Message, "was not set up by this drop-in") {
		t.Errorf("a step after destroy: %d %+v", code, e)
	}

	// The secret came in envs, a bare value to mask and a script: Slipway's
	// records hold it in no form (sealed values are encrypted).
	table := localtest.ScanTable(t, rt)
	for _, form := range localtest.Encodings(testSecret) {
		if bytes.Contains(table, []byte(form)) {
			t.Errorf("DynamoDB holds the secret as %q", form)
		}
	}

	logs.mu.Lock()
	defer logs.mu.Unlock()
	if len(logs.bad) > 0 {
		t.Errorf("calls without the token or account: %v", logs.bad)
	}
	// lite-engine's order for each step: open, write, upload, close.
	var build []string
	for _, c := range logs.calls {
		if strings.HasSuffix(c, " kmpySmUISimoRrJL6NL73w/build") {
			build = append(build, strings.Fields(c)[0]+" "+strings.Fields(c)[1])
		}
	}
	if len(build) < 4 || build[0] != "POST /stream" || build[len(build)-2] != "POST /blob" || build[len(build)-1] != "DELETE /stream" {
		t.Errorf("log service calls for build: %v", build)
	}
	for _, leak := range []string{testSecret, logs.token} {
		if strings.Contains(runnerLog.String(), leak) {
			t.Errorf("the runner's log holds %q", leak)
		}
	}
}

func slogTo(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }
