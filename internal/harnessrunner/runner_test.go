package harnessrunner

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
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

// pluginTag is a stand-in for a plugin image (the Git clone step's
// drone-git): its own entrypoint clones into the workspace, leaves a tool in
// /addon and exports a variable for later steps.
const pluginTag = "slipway-harness-plugin:local"

const pluginScript = `set -e
cd /harness
echo "cloning $DRONE_REMOTE_URL at depth $PLUGIN_DEPTH"
echo cloned > README
echo tool > /addon/tool
echo "DRONE_COMMIT_SHA=abc123" >> "$DRONE_ENV"
`

// serviceTag is a stand-in for a service dependency's image: an HTTP server
// on $PORT of the VM's network.
const serviceTag = "slipway-harness-service:local"

const serviceScript = `mkdir -p /www && echo "pong $POSTGRES_PASSWORD" > /www/ping
echo "serving on $PGPORT"
exec httpd -f -p "127.0.0.1:$PGPORT" -h /www
`

// mintedSecret is what a step makes and hands on as a SECRET output (the
// step's script builds it, so it is in no request).
const mintedSecret = "minted-7d1e-c0ffee"

// TestDropIn drives the runner with the bodies the Harness delegate sends
// (testdata/client), in front of slipway local, with a stand-in for the
// Harness log service, and reads each answer as the delegate does.
func TestDropIn(t *testing.T) {
	docker := agenttest.Docker(t)
	for tag, script := range map[string]string{pluginTag: pluginScript, serviceTag: serviceScript} {
		if err := busyboximage.EnsurePlugin(context.Background(), docker, tag, script); err != nil {
			t.Fatal(err)
		}
	}
	rt, api := localtest.Deployment(t, local.LocalPool("linux", 1, 2))
	ctx := context.Background()
	logs := &fakeLogService{token: "log-token-5d1c", lines: map[string][]Line{}, blobs: map[string][]string{}}
	logSrv := httptest.NewServer(logs)
	t.Cleanup(logSrv.Close)
	runnerLog := &agenttest.Buffer{}
	runner := &Runner{API: api, LogPoll: 50 * time.Millisecond, Log: slogTo(runnerLog)}
	srv := httptest.NewServer(runner.Handler())
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
	setupBody := fixture(t, "client/setup.json", fill)
	var setup SetupResponse
	if code := post(t, srv.URL+"/setup", setupBody, &setup, "setup_response.json"); code != 200 || setup.InstanceID == "" || setup.IPAddress != "127.0.0.1" {
		t.Fatalf("setup: %d %+v\n%s", code, setup, runnerLog)
	}
	st, err := api.Status(ctx, "pZs1Hw3tTc2Qx9Lk0aB7_w", 0, 0)
	if err != nil || st.Timings.BoundAt == nil || st.VM != setup.InstanceID {
		t.Fatalf("after setup the stage is %+v (%v)", st, err)
	}

	runner.mu.Lock()
	first := runner.stages["pZs1Hw3tTc2Qx9Lk0aB7_w"]
	runner.mu.Unlock()
	// The delegate retries a setup whose answer it lost; a newer delegate
	// sends fields this one does not know: the same stage, each unknown
	// field logged once.
	var m map[string]any
	_ = json.Unmarshal(setupBody, &m)
	m["setup_request"].(map[string]any)["gpu_type"] = "a100"
	m["future_field"] = map[string]any{"x": 1}
	retried, _ := json.Marshal(m)
	for range 2 {
		var again SetupResponse
		if code := post(t, srv.URL+"/setup", retried, &again, "setup_response.json"); code != 200 || again.InstanceID != setup.InstanceID {
			t.Fatalf("retried setup: %d %+v, first %+v\n%s", code, again, setup, runnerLog)
		}
	}
	runner.mu.Lock()
	kept := runner.stages["pZs1Hw3tTc2Qx9Lk0aB7_w"]
	runner.mu.Unlock()
	if kept != first {
		t.Error("a retried setup replaced what the first one left for the stage's steps")
	}
	for _, field := range []string{`setup_request: unknown field \"gpu_type\"`, `unknown field \"future_field\"`} {
		if n := strings.Count(runnerLog.String(), field); n != 1 {
			t.Errorf("%s logged %d times:\n%s", field, n, runnerLog)
		}
	}

	// step sends a client fixture and reads the answer as the delegate does.
	step := func(t *testing.T, name, id string, more map[string]string) (int, *PollStepResponse, runnerError) {
		t.Helper()
		f := map[string]string{"pool": "linux", "secret": testSecret, "ip": setup.IPAddress, "step": id,
			"log_key": "kmpySmUISimoRrJL6NL73w/" + id, "image": busyboximage.Tag}
		maps.Copy(f, more)
		resp, err := http.Post(srv.URL+"/step", "application/json", bytes.NewReader(fixture(t, name, f)))
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
	streamed := func(id string) string { return logs.streamed("kmpySmUISimoRrJL6NL73w/" + id) }

	t.Run("a Run step on the VM: an output by its variable, a masked secret, an export", func(t *testing.T) {
		code, poll, e := step(t, "client/step_run.json", "build", map[string]string{
			"script": `echo "$GREETING from $(pwd)"; echo "token $TOKEN"; TAG=v1.2; DEPLOY=minted-7d1e-$(printf c0ffee); echo "export BUILT_BY=slipway" >> "$DRONE_ENV"`})
		success, outputs := delegateReads(poll)
		if code != 200 || !success || poll.ExitCode != 0 || outputs["IMAGE_TAG"] != "v1.2" || poll.OutputV2[0].Type != "STRING" {
			t.Fatalf("%d %+v %+v", code, poll, e)
		}
		// A SECRET output reaches the delegate in outputV2 only, typed so
		// the CI manager encrypts it.
		if outputs["DEPLOY_TOKEN"] != mintedSecret || poll.OutputV2[1].Type != "SECRET" || poll.Outputs["DEPLOY_TOKEN"] != "" {
			t.Errorf("the secret output: %+v", poll)
		}
		got := streamed("build")
		for _, want := range []string{"hello from ", "token ******\n"} {
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

	t.Run("a failing step is a failure, with its exit code and tests", func(t *testing.T) {
		report := `<testsuite name="calc" tests="2" failures="1"><testcase classname="calc.AddTest" name="adds" time="0.01"/>` +
			`<testcase classname="calc.AddTest" name="overflows" time="0.02"><failure message="want 0, got 1"/></testcase></testsuite>`
		code, poll, e := step(t, "client/step_container.json", "fail", map[string]string{
			"script": "mkdir -p reports; echo '" + report + "' > reports/TEST-calc.xml; echo failing; exit 3"})
		if success, _ := delegateReads(poll); code != 200 || success || !poll.Exited || poll.ExitCode != 3 || poll.Error != "exit status 3" {
			t.Fatalf("%d %+v %+v", code, poll, e)
		}
		// Harness's test tab needs its Test Intelligence service: the
		// reports' summary goes to the step's log instead.
		if got, want := streamed("fail"), "failing\nSlipway: tests 2, failed 1, skipped 0, 0.0s\n  FAILED calc.AddTest.overflows: want 0, got 1\n"; got != want {
			t.Errorf("log %q, want %q", got, want)
		}
	})

	t.Run("a secret in the script is masked and kept out of Slipway's records", func(t *testing.T) {
		code, poll, e := step(t, "client/step_run.json", "secret", map[string]string{"script": "TAG=x; echo 'the token is " + testSecret + " and " + mintedSecret + "'"})
		if success, _ := delegateReads(poll); code != 200 || !success {
			t.Fatalf("%d %+v %+v", code, poll, e)
		}
		if got := streamed("secret"); got != "the token is ****** and ******\n" {
			t.Errorf("log %q", got)
		}
	})

	t.Run("the Git clone plugin, with /harness and /addon", func(t *testing.T) {
		code, poll, e := step(t, "client/step_plugin.json", "clone", map[string]string{"image": pluginTag})
		if success, _ := delegateReads(poll); code != 200 || !success {
			t.Fatalf("%d %+v %+v\n%s", code, poll, e, streamed("clone"))
		}
		if got := streamed("clone"); got != "cloning https://git.example/acme/app.git at depth 50\n" {
			t.Errorf("log %q", got)
		}
	})

	t.Run("later steps see the clone, the addon and the exports", func(t *testing.T) {
		code, poll, e := step(t, "client/step_container.json", "after", map[string]string{
			"script": `cat README /addon/tool; echo "$BUILT_BY $DRONE_COMMIT_SHA in $(pwd)"`})
		if success, _ := delegateReads(poll); code != 200 || !success {
			t.Fatalf("%d %+v %+v", code, poll, e)
		}
		// (The failing step's report is still in the workspace, and read again.)
		if got := streamed("after"); !strings.HasPrefix(got, "cloned\ntool\nslipway abc123 in /harness\nSlipway: tests") {
			t.Errorf("log %q", got)
		}
		code, poll, e = step(t, "client/step_run.json", "onhost", map[string]string{"script": `TAG=; cat README; echo "$DRONE_COMMIT_SHA"`})
		if success, _ := delegateReads(poll); code != 200 || !success || streamed("onhost") != "cloned\nabc123\n" {
			t.Errorf("on the VM: %d %+v %+v %q", code, poll, e, streamed("onhost"))
		}
	})

	t.Run("a Run Tests step runs its build tool and reads its reports", func(t *testing.T) {
		pre := `mkdir -p reports; printf 'import unittest\nclass T(unittest.TestCase):\n    def test_ok(self): pass\n' > test_calc.py`
		post := `echo '<testsuite name="calc" tests="1"><testcase classname="test_calc.T" name="test_ok"/></testsuite>' > reports/TEST-calc.xml`
		code, poll, e := step(t, "client/step_runtest.json", "tests", map[string]string{
			"tool": "Unittest", "args": "discover -p 'test_*.py'", "pre": pre, "post": post})
		if success, _ := delegateReads(poll); code != 200 || !success {
			t.Fatalf("%d %+v %+v\n%s", code, poll, e, streamed("tests"))
		}
		if got := streamed("tests"); !strings.Contains(got, "Ran 1 test") || !strings.Contains(got, "Slipway: tests 1, failed 0") {
			t.Errorf("log %q", got)
		}
	})

	t.Run("a service dependency and a background step run on beside later steps", func(t *testing.T) {
		port := agenttest.FreePort(t)
		start := time.Now()
		code, poll, e := step(t, "client/service.json", "database", map[string]string{"image": serviceTag, "port": port})
		if success, _ := delegateReads(poll); code != 200 || !success || poll.Exited {
			t.Fatalf("service: %d %+v %+v", code, poll, e)
		}
		// Answered once it runs, not at the end of a long-poll on a step
		// that does not end (25 s).
		if took := time.Since(start); took > 20*time.Second {
			t.Errorf("the service was answered after %s", took)
		}
		code, poll, e = step(t, "client/step_background.json", "heartbeat", map[string]string{
			"script": `echo beating; while :; do date > heartbeat; sleep 0.1; done`})
		if success, _ := delegateReads(poll); code != 200 || !success || poll.Exited {
			t.Fatalf("background: %d %+v %+v", code, poll, e)
		}
		// The service's port is the VM's; its secret is masked in its log.
		code, poll, e = step(t, "client/step_container.json", "uses", map[string]string{
			"script": `for i in $(seq 50); do wget -qO- http://127.0.0.1:` + port + `/ping 2>/dev/null && break; sleep 0.1; done; for i in $(seq 50); do [ -s heartbeat ] && break; sleep 0.1; done; test -s heartbeat && echo beats`})
		if success, _ := delegateReads(poll); code != 200 || !success {
			t.Fatalf("%d %+v %+v", code, poll, e)
		}
		if got := streamed("uses"); !strings.HasPrefix(got, "pong ******\nbeats\n") {
			t.Errorf("the later step saw %q", got)
		}
		agenttest.Until(t, 10*time.Second, "the service's log streamed", func() bool { return strings.Contains(streamed("database"), "serving on "+port) })
	})

	t.Run("a step that does not map is refused by field", func(t *testing.T) {
		code, _, e := step(t, "client/step_runtest.json", "ant", map[string]string{"tool": "Ant", "args": "test", "pre": "", "post": ""})
		if code != 400 || e.Code != 400 || !strings.Contains(e.Message, `start_step_request.run_test.build_tool "Ant"`) {
			t.Fatalf("%d %+v", code, e)
		}
	})

	t.Run("a retried step awaits the first", func(t *testing.T) {
		code, poll, _ := step(t, "client/step_run.json", "build", map[string]string{"script": "echo never runs"})
		if success, outputs := delegateReads(poll); code != 200 || !success || outputs["IMAGE_TAG"] != "v1.2" {
			t.Fatalf("%d %+v", code, poll)
		}
	})

	if code := post(t, srv.URL+"/destroy", fixture(t, "client/destroy.json", map[string]string{"pool": "linux"}), nil, ""); code != 200 {
		t.Fatalf("destroy: %d\n%s", code, runnerLog)
	}
	st, err = api.Status(ctx, "pZs1Hw3tTc2Qx9Lk0aB7_w", 0, 0)
	if err != nil || st.Phase != stage.PhaseReleased {
		t.Fatalf("after destroy the stage is %+v (%v)", st, err)
	}
	if code, _, e := step(t, "client/step_run.json", "late", map[string]string{"script": "true"}); code != 404 || !strings.Contains(e.Message, "was not set up by this drop-in") {
		t.Errorf("a step after destroy: %d %+v", code, e)
	}

	// The secret came in envs, a bare value to mask and a script: Slipway's
	// records hold it in no form (sealed values are encrypted).
	table := localtest.ScanTable(t, rt)
	for _, secret := range []string{testSecret, mintedSecret} {
		for _, form := range localtest.Encodings(secret) {
			if bytes.Contains(table, []byte(form)) {
				t.Errorf("DynamoDB holds the secret as %q", form)
			}
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
	// A background step's log is closed and uploaded at destroy.
	if !slices.Contains(logs.calls, "DELETE /stream kmpySmUISimoRrJL6NL73w/heartbeat") || !strings.HasPrefix(strings.Join(logs.blobs["kmpySmUISimoRrJL6NL73w/heartbeat"], ""), "beating\n") {
		t.Errorf("the background step's log was not closed at destroy: %v", logs.calls)
	}
	for _, leak := range []string{testSecret, logs.token} {
		if strings.Contains(runnerLog.String(), leak) {
			t.Errorf("the runner's log holds %q", leak)
		}
	}
}

func slogTo(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }
