package local_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/internal/local"
	"github.com/slipway-ci/slipway/internal/localaws"
	"github.com/slipway-ci/slipway/internal/pool"
	"github.com/slipway-ci/slipway/internal/stage"
)

// One runtime serves every end-to-end test of the package: its pools are
// the tests' own, so each test judges only its pool.
var shared struct {
	once    sync.Once
	rt      *local.Runtime
	err     error
	metrics *syncBuffer
	logs    *syncBuffer
}

// syncBuffer is a bytes.Buffer for many writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.rt != nil {
		shared.rt.Close()
	}
	os.Exit(code)
}

// testPools are every pool the tests use, each for one test (or a few that
// do not judge its depth).
var testPools = []pool.Pool{
	local.LocalPool("warm", 2, 4),
	local.LocalPool("cold", 0, 2),
	local.LocalPool("full", 0, 1),
	local.LocalPool("many", 5, 8),
	local.LocalPool("misc", 1, 6),
}

// runtime starts the shared runtime once. It needs DynamoDB Local and
// local-kms (`make test` starts them); without them the test fails in CI and
// is skipped elsewhere.
func runtime(t *testing.T) *local.Runtime {
	t.Helper()
	ddb, kms := os.Getenv(localaws.DynamoDBEndpointEnv), os.Getenv(localaws.KMSEndpointEnv)
	if ddb == "" || kms == "" {
		msg := "no DynamoDB Local or local-kms: run `make test`, or run the test under `.ci/with-services`"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	shared.once.Do(func() {
		root, err := local.RepoRoot(".")
		if err != nil {
			shared.err = err
			return
		}
		agent, err := buildAgent()
		if err != nil {
			shared.err = err
			return
		}
		shared.metrics, shared.logs = &syncBuffer{}, &syncBuffer{}
		o := local.Options{
			Listen: "127.0.0.1:0", AgentPath: agent, DynamoDBEndpoint: ddb, KMSEndpoint: kms,
			Pools: testPools, Tick: time.Second, Metrics: shared.metrics, Logs: shared.logs,
			Settings: stage.Settings{AgentGrace: 2 * time.Second, AcquirePoll: time.Second},
		}
		o.FromRepo(root)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		shared.rt, shared.err = local.Start(ctx, o)
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the runtime's log:\n%s", shared.logs.Bytes())
		}
	})
	return shared.rt
}

func buildAgent() (string, error) {
	dir, err := os.MkdirTemp("", "slipway-e2e-agent-")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "slipway-agent")
	cmd := exec.Command("go", "build", "-o", path, "github.com/slipway-ci/slipway/agent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build agent: %w\n%s", err, out)
	}
	return path, nil
}

// call sends one request to the delegate API and decodes the answer into
// out; it returns the status code.
func call(t *testing.T, rt *local.Runtime, method, path string, body, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, rt.APIURL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: %d %s: %v", method, path, resp.StatusCode, data, err)
		}
	}
	return resp.StatusCode
}

// released waits for the stage to be released and returns its status.
func released(t *testing.T, rt *local.Runtime, id string, within time.Duration) *stage.Status {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var st stage.Status
		if code := call(t, rt, "GET", "/v1/stages/"+id+"?wait=5s", nil, &st); code != 200 {
			t.Fatalf("get stage %s: %d", id, code)
		}
		if st.Phase == stage.PhaseReleased {
			return &st
		}
		if time.Now().After(deadline) {
			t.Fatalf("stage %s not released in %s: %+v", id, within, st)
		}
	}
}

func TestWarmStage(t *testing.T) {
	rt := runtime(t)
	spec := stage.Spec{
		ID: "warm-1", Pool: "warm",
		Env: map[string]string{"GREETING": "hello"},
		Groups: []stage.Group{
			{Steps: []stage.Step{
				{ID: "a", Step: step(`echo "$GREETING from a"; echo "A=1" >> "$SLIPWAY_OUTPUT"`)},
				{ID: "b", Step: step(`echo b`)},
			}},
			{Steps: []stage.Step{{ID: "c", Step: step(`test -n "$SLIPWAY_WORKSPACE"`)}}, Final: true},
		},
	}
	var st stage.Status
	if code := call(t, rt, "POST", "/v1/stages", spec, &st); code != http.StatusCreated {
		t.Fatalf("create: %d %+v", code, st)
	}
	final := released(t, rt, "warm-1", time.Minute)
	if final.Result != stage.Succeeded || len(final.Groups) != 2 || final.Groups[0].Steps[0].Outputs["A"] != "1" {
		t.Fatalf("stage: %+v", final)
	}
	t.Logf("lease wait %d ms", *final.Timings.LeaseWaitMs)
}

func step(script string) agentapi.Step { return agentapi.Step{Script: script} }
