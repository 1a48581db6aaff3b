package stage_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/agent/agenttest"
	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/internal/stage"
	"github.com/slipway-ci/slipway/internal/stage/record"
)

func script(s string) agentapi.Step { return agentapi.Step{Script: s} }

func TestCreateIsIdempotent(t *testing.T) {
	e := newEnv(t, testPool("p", 0, 2))
	spec := stage.Spec{
		ID: "s1", Pool: "p", Env: map[string]string{"A": "1"}, Secrets: map[string]string{"TOKEN": "t0ps3cret"},
		Groups: []stage.Group{{Steps: []stage.Step{{ID: "build", Step: script("make")}}, Final: true}},
	}
	first := e.do(t, "POST", "/v1/stages", spec, true)
	if first.status != http.StatusCreated {
		t.Fatalf("create: %d %s", first.status, first.body)
	}
	var st stage.Status
	first.decode(t, &st)
	if st.ID != "s1" || st.Phase != stage.PhaseQueued || !st.Closed || len(st.Groups) != 1 || st.Groups[0].Steps[0].State != stage.StatePending {
		t.Fatalf("status %+v", st)
	}
	// A retry of the same request (secret values are not compared: nothing
	// derived from them is stored) is the same stage.
	spec.Secrets["TOKEN"] = "another value"
	if again := e.do(t, "POST", "/v1/stages", spec, true); again.status != http.StatusOK {
		t.Fatalf("repeat: %d %s", again.status, again.body)
	}
	spec.Env["A"] = "2"
	if clash := e.do(t, "POST", "/v1/stages", spec, true); clash.status != http.StatusConflict || !strings.Contains(clash.errorMessage(), "another body") {
		t.Fatalf("another body: %d %s", clash.status, clash.body)
	}
	// Each create starts the execution (Step Functions keeps one per name),
	// the same one, with the stage id as its only input.
	calls := e.execs.started()
	if len(calls) != 2 || !executionName.MatchString(aws.ToString(calls[0].Name)) || !strings.HasPrefix(aws.ToString(calls[0].Name), "s1_") ||
		aws.ToString(calls[1].Name) != aws.ToString(calls[0].Name) || aws.ToString(calls[0].Input) != `{"stage_id":"s1"}` {
		t.Fatalf("executions %+v", calls)
	}
}

// executionName is what Step Functions takes as an execution's name (80
// characters) in the characters its CloudWatch logging wants.
var executionName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,80}$`)

// A stage id used again once the first stage's records expired (after
// days; Step Functions keeps an execution's name for 90) is a new stage
// with an execution of its own, not one that never runs: Step Functions
// answers a name of an execution that ended with ExecutionAlreadyExists.
func TestStageIDUsedAgainGetsItsOwnExecution(t *testing.T) {
	e := newEnv(t, testPool("p", 0, 2))
	ctx := t.Context()
	long := strings.Repeat("x", agentapi.MaxIDLength)
	for _, id := range []string{"again", long} {
		spec := stage.Spec{ID: id, Pool: "p", Groups: []stage.Group{{Steps: []stage.Step{{ID: "build", Step: script("make")}}, Final: true}}}
		if a := e.do(t, "POST", "/v1/stages", spec, true); a.status != http.StatusCreated {
			t.Fatalf("create: %d %s", a.status, a.body)
		}
		calls := e.execs.started()
		first := aws.ToString(calls[len(calls)-1].Name)
		if !executionName.MatchString(first) {
			t.Fatalf("execution name %q", first)
		}
		e.execs.end(first)
		// The records expire (DynamoDB's TTL deletes them).
		rec, err := e.stages.StageRecords(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		e.expire(t, rec)
		time.Sleep(2 * time.Millisecond)
		if a := e.do(t, "POST", "/v1/stages", spec, true); a.status != http.StatusCreated {
			t.Fatalf("create again: %d %s", a.status, a.body)
		}
		calls = e.execs.started()
		second := aws.ToString(calls[len(calls)-1].Name)
		if second == first || !executionName.MatchString(second) {
			t.Fatalf("the second stage %s was given execution %q (the first: %q)", id, second, first)
		}
	}
}

// The release an execution's end triggers (EventBridge's status change)
// finds the stage by the execution's input.
func TestCleanupOfAnExecutionThatFailed(t *testing.T) {
	e := newEnv(t, testPool("p", 0, 2))
	if a := e.do(t, "POST", "/v1/stages", stage.Spec{ID: "failed", Pool: "p"}, true); a.status != http.StatusCreated {
		t.Fatalf("create: %d %s", a.status, a.body)
	}
	run := e.execs.started()[0]
	change := &stage.ExecutionChange{Name: aws.ToString(run.Name), Status: "FAILED", Error: "States.Runtime", Input: aws.ToString(run.Input)}
	out, err := stage.NewCleanup(e.deps).Handle(t.Context(), stage.CleanupInput{Detail: change})
	if err != nil || out.StageID != "failed" {
		t.Fatalf("cleanup: %+v %v", out, err)
	}
	st, err := e.stages.GetStage(t.Context(), "failed")
	if err != nil || st.ReleasedAt.IsZero() || st.Result != stage.Errored {
		t.Fatalf("stage after the execution's failure: %+v %v", st, err)
	}
}

func TestRequestsAreValidated(t *testing.T) {
	e := newEnv(t, testPool("p", 0, 2))
	huge := strings.Repeat("x", stage.MaxBodyBytes)
	for _, tc := range []struct {
		name, method, path string
		body               any
		status             int
		want               []string // in the error message
	}{
		{"every problem at once", "POST", "/v1/stages", map[string]any{
			"id": "bad id!", "pool": "nope", "timeout_seconds": 999999,
			"groups": []any{
				map[string]any{"final": true, "steps": []any{map[string]any{"id": "a", "command": []string{}}}},
				map[string]any{"steps": []any{map[string]any{"id": "a", "script": "x", "shell": "zsh"}}},
			},
		}, 400, []string{"stage id \"bad id!\"", "pool: unknown pool \"nope\" (known: p)", "timeout_seconds: 999999", "groups[0]: final, but groups follow it", "groups[0].steps[0]: empty step", "groups[1].steps[0].id: \"a\" is also the id of groups[0].steps[0]", "groups[1].steps[0]: shell \"zsh\""}},
		{"unknown field", "POST", "/v1/stages", `{"id":"s","pool":"p","colour":"red"}`, 400, []string{`unknown field "colour"`}},
		{"not JSON", "POST", "/v1/stages", `{"id":`, 400, []string{"decode body"}},
		{"trailing data", "POST", "/v1/stages", `{"id":"s","pool":"p"} {}`, 400, []string{"trailing data"}},
		{"too large", "POST", "/v1/stages", `{"id":"s","pool":"p","env":{"X":"` + huge + `"}}`, 413, []string{"over 1048576 bytes"}},
		{"no steps", "POST", "/v1/stages/s/groups", `{"steps":[]}`, 400, []string{"steps: 0 steps, want 1 to 50"}},
		{"bad wait", "GET", "/v1/stages/s?wait=forever", nil, 400, []string{`wait "forever"`}},
		{"wait too long", "GET", "/v1/stages/s?wait=2m", nil, 400, []string{"from 0s to 25s"}},
		{"unknown parameter", "GET", "/v1/stages/s?colour=red", nil, 400, []string{`query parameter "colour"`}},
		{"bad offset", "GET", "/v1/stages/s/steps/a/logs?offset=-1", nil, 400, []string{`offset "-1"`}},
		{"bad stage id", "GET", "/v1/stages/no%20spaces", nil, 400, []string{"stage id"}},
		{"no such stage", "GET", "/v1/stages/nope", nil, 404, []string{`no stage "nope"`}},
		{"no such path", "GET", "/v2/things", nil, 404, []string{"no such path"}},
		{"wrong method", "PUT", "/v1/stages/s", nil, 405, []string{"does not take PUT"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := e.do(t, tc.method, tc.path, tc.body, false)
			if a.status != tc.status {
				t.Fatalf("status %d, want %d: %s", a.status, tc.status, a.body)
			}
			for _, w := range tc.want {
				if !strings.Contains(a.errorMessage(), w) {
					t.Errorf("the message lacks %q:\n%s", w, a.errorMessage())
				}
			}
		})
	}
}

func TestOpenStageGroups(t *testing.T) {
	e := newEnv(t, testPool("p", 0, 2))
	if a := e.do(t, "POST", "/v1/stages", stage.Spec{ID: "open", Pool: "p"}, true); a.status != 201 {
		t.Fatalf("create: %d %s", a.status, a.body)
	}
	g := stage.Group{Steps: []stage.Step{{ID: "one", Step: agentapi.Step{Command: []string{"true"}, Secrets: map[string]string{"K": "step-secret"}}}}}
	if a := e.do(t, "POST", "/v1/stages/open/groups", g, true); a.status != 201 {
		t.Fatalf("group: %d %s", a.status, a.body)
	}
	// The same group again (a retry) is the same group; another with a step
	// id used is refused.
	if a := e.do(t, "POST", "/v1/stages/open/groups", g, true); a.status != 201 {
		t.Fatalf("retried group: %d %s", a.status, a.body)
	}
	clash := stage.Group{Steps: []stage.Step{{ID: "one", Step: script("echo other")}}}
	if a := e.do(t, "POST", "/v1/stages/open/groups", clash, true); a.status != 409 || !strings.Contains(a.errorMessage(), "one") {
		t.Fatalf("step id reused: %d %s", a.status, a.body)
	}
	last := stage.Group{Steps: []stage.Step{{ID: "two", Step: script("true")}}, Final: true}
	a := e.do(t, "POST", "/v1/stages/open/groups", last, true)
	var st stage.Status
	a.decode(t, &st)
	if a.status != 201 || len(st.Groups) != 2 || !st.Closed {
		t.Fatalf("final group: %d %+v", a.status, st)
	}
	if a := e.do(t, "POST", "/v1/stages/open/groups", stage.Group{Steps: []stage.Step{{ID: "three", Step: script("true")}}}, true); a.status != 409 || !strings.Contains(a.errorMessage(), "stage_closed") {
		t.Fatalf("after the final group: %d %s", a.status, a.body)
	}
	if a := e.do(t, "POST", "/v1/stages/nope/groups", g, true); a.status != 404 {
		t.Fatalf("group of no stage: %d %s", a.status, a.body)
	}
	// A pending step: its status, an empty log, and no cancel.
	step := e.do(t, "GET", "/v1/stages/open/steps/two", nil, true)
	var ss stage.StepStatus
	step.decode(t, &ss)
	if step.status != 200 || ss.State != stage.StatePending || ss.Group != 1 {
		t.Fatalf("pending step: %d %s", step.status, step.body)
	}
	logs := e.do(t, "GET", "/v1/stages/open/steps/two/logs?offset=0", nil, true)
	var chunk stage.LogChunk
	logs.decode(t, &chunk)
	if logs.status != 200 || chunk.Done || len(chunk.Data) != 0 {
		t.Fatalf("logs of a pending step: %d %s", logs.status, logs.body)
	}
	if a := e.do(t, "POST", "/v1/stages/open/steps/two/cancel", nil, true); a.status != 409 || !strings.Contains(a.errorMessage(), "step_not_running") {
		t.Fatalf("cancel a pending step: %d %s", a.status, a.body)
	}
	if a := e.do(t, "GET", "/v1/stages/open/steps/zzz", nil, true); a.status != 404 {
		t.Fatalf("no such step: %d %s", a.status, a.body)
	}
}

func TestLongPollAndCancel(t *testing.T) {
	e := newEnv(t, testPool("p", 0, 2))
	a := e.do(t, "POST", "/v1/stages", stage.Spec{ID: "lp", Pool: "p"}, true)
	var st stage.Status
	a.decode(t, &st)
	// Nothing changes: the long-poll answers when its wait has passed.
	start := time.Now()
	if a := e.do(t, "GET", "/v1/stages/lp?wait=1s&version="+itoa(st.Version), nil, true); a.status != 200 || time.Since(start) < time.Second {
		t.Fatalf("long-poll: %d after %s", a.status, time.Since(start))
	}
	// A change ends it early.
	done := make(chan answer)
	go func() { done <- e.do(t, "GET", "/v1/stages/lp?wait=20s&version="+itoa(st.Version), nil, true) }()
	for deadline := time.Now().Add(10 * time.Second); e.serving.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the long-poll never reached the API")
		}
	}
	start = time.Now()
	if a := e.do(t, "DELETE", "/v1/stages/lp", nil, true); a.status != http.StatusAccepted {
		t.Fatalf("cancel: %d %s", a.status, a.body)
	}
	changed := <-done
	var after stage.Status
	changed.decode(t, &after)
	if time.Since(start) > 5*time.Second || after.Result != stage.Canceled || after.Version == st.Version {
		t.Fatalf("the long-poll after the cancel: %+v after %s", after, time.Since(start))
	}
	// The release runs at once, asynchronously: the cleanup function is
	// invoked with the stage's id.
	calls := e.invoker.invoked()
	if len(calls) != 1 || aws.ToString(calls[0].FunctionName) != "cleanup" || calls[0].InvocationType != "Event" || !strings.Contains(string(calls[0].Payload), `"stage_id":"lp"`) {
		t.Fatalf("invocations %+v", calls)
	}
	if a := e.do(t, "DELETE", "/v1/stages/lp", nil, true); a.status != http.StatusAccepted {
		t.Fatalf("cancel again: %d %s", a.status, a.body)
	}
}

func TestListStages(t *testing.T) {
	e := newEnv(t, testPool("p", 0, 1), testPool("q", 0, 1))
	for _, st := range []stage.Spec{{ID: "l1", Pool: "p"}, {ID: "l2", Pool: "q"}, {ID: "l3", Pool: "p"}} {
		if a := e.do(t, "POST", "/v1/stages", st, true); a.status != 201 {
			t.Fatalf("create: %d %s", a.status, a.body)
		}
	}
	var l stage.StageList
	e.do(t, "GET", "/v1/stages?pool=p&since=1h", nil, true).decode(t, &l)
	if len(l.Stages) != 2 || l.Stages[0].ID != "l3" || l.Stages[1].ID != "l1" || l.Stages[0].Phase != stage.PhaseQueued {
		t.Fatalf("list of pool p: %+v", l)
	}
	e.do(t, "GET", "/v1/stages?limit=1", nil, true).decode(t, &l)
	if len(l.Stages) != 1 || l.Stages[0].ID != "l3" {
		t.Fatalf("list, limit 1: %+v", l)
	}
	a := e.do(t, "GET", "/v1/stages?since=9000h&limit=0&nope=1", nil, false)
	for _, want := range []string{"since", "limit", `"nope"`} {
		if a.status != 400 || !strings.Contains(a.errorMessage(), want) {
			t.Errorf("bad list query: %d %s lacks %s", a.status, a.body, want)
		}
	}
}

func TestPoolsAndDocument(t *testing.T) {
	e := newEnv(t, testPool("p", 1, 3))
	e.warmUp(t, "p", 1)
	a := e.do(t, "GET", "/v1/pools", nil, true)
	var pools stage.Pools
	a.decode(t, &pools)
	if a.status != 200 || len(pools.Pools) != 1 || pools.Pools[0].Idle != 1 || pools.Pools[0].Max != 3 || pools.Pools[0].WarmTarget != 1 {
		t.Fatalf("pools: %d %s", a.status, a.body)
	}
	if a := e.do(t, "GET", "/v1/openapi.yaml", nil, true); a.status != 200 || !strings.HasPrefix(string(a.body), "openapi: 3.1") {
		t.Fatalf("document: %d", a.status)
	}
}

// TestLiveStep: a step running on a real agent, watched through the API:
// its status and log come from the agent, cancel reaches it, and once the
// stage is released its log is gone with the VM.
func TestLiveStep(t *testing.T) {
	e := newEnv(t, testPool("p", 1, 2))
	e.warmUp(t, "p", 1)
	ctx := agenttest.Context(t)
	spec := stage.Spec{ID: "live", Pool: "p", Secrets: map[string]string{"TOKEN": "hunter2-live"}, Groups: []stage.Group{
		{Steps: []stage.Step{{ID: "slow", Step: script(`echo "token is $TOKEN"; echo started; sleep 60`)}}, Final: true},
	}}
	if a := e.do(t, "POST", "/v1/stages", spec, true); a.status != 201 {
		t.Fatalf("create: %d %s", a.status, a.body)
	}
	init := stage.NewInit(e.deps)
	if out, err := init.Handle(ctx, stage.Input{StageID: "live"}); err != nil || out.Status != stage.StatusLeased {
		t.Fatalf("init: %+v %v", out, err)
	}
	run := make(chan stage.Output, 1)
	go func() {
		out, err := stage.NewRunGroup(e.deps).Handle(ctx, stage.Input{StageID: "live"})
		if err != nil {
			t.Error(err)
		}
		run <- out
	}()
	var chunk stage.LogChunk
	for !strings.Contains(string(chunk.Data), "started") {
		a := e.do(t, "GET", "/v1/stages/live/steps/slow/logs", nil, true)
		if a.status != 200 {
			t.Fatalf("logs: %d %s", a.status, a.body)
		}
		a.decode(t, &chunk)
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(string(chunk.Data), "token is ******") || strings.Contains(string(chunk.Data), "hunter2") {
		t.Fatalf("the log is not masked: %q", chunk.Data)
	}
	if chunk.NextOffset != int64(len(chunk.Data)) || chunk.Done {
		t.Fatalf("chunk %+v", chunk)
	}
	a := e.do(t, "GET", "/v1/stages/live/steps/slow?wait=1s", nil, true)
	var ss stage.StepStatus
	a.decode(t, &ss)
	if ss.State != stage.StateRunning || ss.StartedAt == nil {
		t.Fatalf("running step: %s", a.body)
	}
	if a := e.do(t, "POST", "/v1/stages/live/steps/slow/cancel", nil, true); a.status != http.StatusAccepted {
		t.Fatalf("cancel: %d %s", a.status, a.body)
	}
	out := <-run
	if out.Status != stage.StatusDone {
		t.Fatalf("run group: %+v", out)
	}
	if _, err := stage.NewCleanup(e.deps).Handle(ctx, stage.CleanupInput{StageID: "live"}); err != nil {
		t.Fatal(err)
	}
	final := e.do(t, "GET", "/v1/stages/live", nil, true)
	var st stage.Status
	final.decode(t, &st)
	if st.Phase != stage.PhaseReleased || st.Result != stage.Failed || !strings.Contains(st.Reason, "step slow canceled") || st.Groups[0].Steps[0].State != "canceled" {
		t.Fatalf("after the release: %s", final.body)
	}
	// After the release the log comes from the archive: the same bytes at
	// the same offsets.
	for _, offset := range []int{0, 5, len(chunk.Data)} {
		a := e.do(t, "GET", "/v1/stages/live/steps/slow/logs?offset="+itoa(int64(offset)), nil, true)
		var archived stage.LogChunk
		a.decode(t, &archived)
		if a.status != 200 || string(archived.Data) != string(chunk.Data[offset:]) || !archived.Done || archived.NextOffset != int64(len(chunk.Data)) {
			t.Fatalf("logs at %d after the release: %d %s, live %q", offset, a.status, a.body, chunk.Data)
		}
	}
	if a := e.do(t, "GET", "/v1/stages/live/steps/nope/logs", nil, true); a.status != http.StatusNotFound {
		t.Fatalf("logs of no such step: %d %s", a.status, a.body)
	}
	for _, raw := range [][]byte{final.body, e.metrics.Bytes()} {
		if strings.Contains(string(raw), "hunter2") {
			t.Fatalf("a secret in plain text: %s", raw)
		}
	}
}

func itoa(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// A group the delegate adds to a bound stage whose groups so far have ended
// (as recorded, or on the agent for the one before it) starts on the VM with
// the request, before RunGroup looks; RunGroup then follows and records the
// steps it finds running or ended, without running them again.
func TestAddedGroupStartsAtOnce(t *testing.T) {
	e := newEnv(t, testPool("p", 1, 2))
	e.warmUp(t, "p", 1)
	ctx := agenttest.Context(t)
	if a := e.do(t, "POST", "/v1/stages", stage.Spec{ID: "early", Pool: "p"}, true); a.status != 201 {
		t.Fatalf("create: %d %s", a.status, a.body)
	}
	if out, err := stage.NewInit(e.deps).Handle(ctx, stage.Input{StageID: "early"}); err != nil || out.Status != stage.StatusLeased {
		t.Fatalf("init: %+v %v", out, err)
	}
	counting := `echo "$0" >> "$SLIPWAY_WORKSPACE/runs"; echo "$TOKEN"; grep -c . "$SLIPWAY_WORKSPACE/runs"`
	for i, id := range []string{"first", "second"} {
		g := stage.Group{Final: i == 1, Steps: []stage.Step{{ID: id, Step: agentapi.Step{
			Command: []string{"sh", "-c", counting, id}, Secrets: map[string]string{"TOKEN": "early-s3cret"}}}}}
		if a := e.do(t, "POST", "/v1/stages/early/groups", g, true); a.status != 201 {
			t.Fatalf("group %s: %d %s", id, a.status, a.body)
		}
		// No RunGroup has run: the agent has the step, and says how it ended.
		var ss stage.StepStatus
		e.do(t, "GET", "/v1/stages/early/steps/"+id+"?wait=10s", nil, true).decode(t, &ss)
		if ss.State != stage.Succeeded {
			t.Fatalf("step %s before any RunGroup: %+v", id, ss)
		}
	}
	out, err := stage.NewRunGroup(e.deps).Handle(ctx, stage.Input{StageID: "early", Status: stage.StatusLeased})
	if err != nil || out.Status != stage.StatusDone {
		t.Fatalf("run group: %+v %v", out, err)
	}
	st := e.status(t, "early")
	if st.Result != stage.Succeeded || st.Groups[0].Steps[0].State != stage.Succeeded || st.Groups[1].Steps[0].State != stage.Succeeded {
		t.Fatalf("stage %+v", st)
	}
	var chunk stage.LogChunk
	e.do(t, "GET", "/v1/stages/early/steps/second/logs?offset=0", nil, true).decode(t, &chunk)
	if got := string(chunk.Data); got != "******\n2\n" {
		t.Errorf("each step ran with its secret, once: the second's log %q", got)
	}
	if _, err := stage.NewCleanup(e.deps).Handle(ctx, stage.CleanupInput{StageID: "early"}); err != nil {
		t.Fatal(err)
	}
}

// endsBeforeAdd is the stage store as it is when the stage ends (a cancel)
// while a group's add is on its way: the group was ready to run as the API
// read the stage, so its step started early, and the add then fails.
type endsBeforeAdd struct {
	*record.Store
	started func(ctx context.Context) error
}

func (s *endsBeforeAdd) AddGroup(ctx context.Context, stageID string, read *record.Records, g record.NewGroup) (*record.Group, *record.Records, error) {
	if err := s.started(ctx); err != nil {
		return nil, nil, err
	}
	if _, err := s.EndStage(ctx, stageID, stage.Canceled, "canceled during the add"); err != nil {
		return nil, nil, err
	}
	return s.Store.AddGroup(ctx, stageID, read, g)
}

// A step started while its group is recorded, whose record then fails, is
// canceled on the agent at once: nothing unrecorded runs on.
func TestAStepStartedEarlyIsCanceledWhenItsGroupIsNotRecorded(t *testing.T) {
	e := newEnv(t, testPool("p", 1, 2))
	e.warmUp(t, "p", 1)
	ctx := agenttest.Context(t)
	if a := e.do(t, "POST", "/v1/stages", stage.Spec{ID: "raced", Pool: "p"}, true); a.status != 201 {
		t.Fatalf("create: %d %s", a.status, a.body)
	}
	if out, err := stage.NewInit(e.deps).Handle(ctx, stage.Input{StageID: "raced"}); err != nil || out.Status != stage.StatusLeased {
		t.Fatalf("init: %+v %v", out, err)
	}
	st, err := e.deps.Stages.GetStage(ctx, "raced")
	if err != nil {
		t.Fatal(err)
	}
	agent, err := e.deps.Agents.Client(&lease.VM{LaunchID: st.VM, Address: st.VMAddress})
	if err != nil {
		t.Fatal(err)
	}
	stepOnAgent := func(ctx context.Context) (*agentapi.StepStatus, error) {
		return agent.StepStatus(ctx, "raced", "long", 0)
	}
	e.api.Stages = &endsBeforeAdd{Store: e.deps.Stages, started: func(ctx context.Context) error {
		// The add waits until the early start reached the agent.
		for {
			if s, err := stepOnAgent(ctx); err == nil && s.State == agentapi.StepRunning {
				return nil
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			time.Sleep(10 * time.Millisecond)
		}
	}}
	g := stage.Group{Steps: []stage.Step{{ID: "long", Step: script("sleep 60")}}}
	a := e.do(t, "POST", "/v1/stages/raced/groups?wait=20s", g, true)
	if a.status != http.StatusConflict || !strings.Contains(a.errorMessage(), "ended") {
		t.Fatalf("add to a stage that ended meanwhile: %d %s", a.status, a.body)
	}
	s, err := stepOnAgent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.State == agentapi.StepRunning {
		// Canceled: the grace (SIGTERM to sh, which ends sleep) is short.
		s, err = agent.WaitStep(ctx, "raced", "long", s.BootID, 0)
		if err != nil {
			t.Fatal(err)
		}
	}
	if s.State != agentapi.StepCanceled {
		t.Errorf("the unrecorded step on the agent: %s, want canceled", s.State)
	}
}

// A refusal quotes what was wrong: an id, a name, a path, a key. When that
// is also the value of one of the request's secrets (the stage's or a
// step's), the refusal masks it, as the agent masks a step's log. Each case
// is also sent with an unrelated secret, to show that it quotes the value.
func TestRefusalsMaskTheRequestsSecrets(t *testing.T) {
	e := newEnv(t, testPool("p", 0, 2))
	if a := e.do(t, "POST", "/v1/stages", stage.Spec{ID: "open", Pool: "p"}, true); a.status != http.StatusCreated {
		t.Fatalf("create: %d %s", a.status, a.body)
	}
	type obj = map[string]any
	stageWith := func(secret string, set func(spec, step obj)) obj {
		step := obj{"id": "build", "script": "make"}
		spec := obj{"id": "masked", "pool": "p", "secrets": obj{"TOKEN": secret}, "groups": []any{obj{"steps": []any{step}, "final": true}}}
		set(spec, step)
		return spec
	}
	cases := []struct {
		name, path, value string
		body              func(secret string) obj
	}{
		{"env name", "/v1/stages", "s3cr3t v4lue", func(secret string) obj {
			return stageWith(secret, func(spec, _ obj) { spec["env"] = obj{"s3cr3t v4lue": "x"} })
		}},
		{"stage id", "/v1/stages", "s3cr3t!v4lue", func(secret string) obj {
			return stageWith(secret, func(spec, _ obj) { spec["id"] = "s3cr3t!v4lue" })
		}},
		{"step id", "/v1/stages", "s3cr3t!v4lue", func(secret string) obj {
			return stageWith(secret, func(_, step obj) { step["id"] = "s3cr3t!v4lue" })
		}},
		{"pool", "/v1/stages", "s3cr3t-v4lue", func(secret string) obj {
			return stageWith(secret, func(spec, _ obj) { spec["pool"] = "s3cr3t-v4lue" })
		}},
		{"shell", "/v1/stages", "s3cr3t-v4lue", func(secret string) obj {
			return stageWith(secret, func(_, step obj) { step["shell"] = "s3cr3t-v4lue" })
		}},
		{"report glob", "/v1/stages", "s3cr3t[v4lue", func(secret string) obj {
			return stageWith(secret, func(_, step obj) { step["reports"] = []string{"s3cr3t[v4lue"} })
		}},
		{"work dir", "/v1/stages", "../s3cr3t", func(secret string) obj {
			return stageWith(secret, func(_, step obj) { step["work_dir"] = "../s3cr3t" })
		}},
		{"user", "/v1/stages", "s3cr3t v4lue", func(secret string) obj {
			return stageWith(secret, func(_, step obj) { step["user"] = "s3cr3t v4lue" })
		}},
		{"file path", "/v1/stages", "/s3cr3t", func(secret string) obj {
			return stageWith(secret, func(spec, _ obj) { spec["files"] = []any{obj{"path": "/s3cr3t", "data": "eA=="}} })
		}},
		{"unknown key", "/v1/stages", "s3cr3t_v4lue", func(secret string) obj {
			return stageWith(secret, func(spec, _ obj) { spec["s3cr3t_v4lue"] = 1 })
		}},
		{"a step's secret, in a group added", "/v1/stages/open/groups", "s3cr3t!v4lue", func(secret string) obj {
			return obj{"steps": []any{obj{"id": "s3cr3t!v4lue", "script": "make", "secrets": obj{"TOKEN": secret}}}}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			plain := e.do(t, "POST", c.path, c.body("unrelated"), false)
			if plain.status != http.StatusBadRequest || !strings.Contains(plain.errorMessage(), c.value) {
				t.Fatalf("with an unrelated secret: %d %s, want a 400 that quotes %q", plain.status, plain.body, c.value)
			}
			masked := e.do(t, "POST", c.path, c.body(c.value), false)
			if masked.status != http.StatusBadRequest || strings.Contains(string(masked.body), c.value) {
				t.Fatalf("with the secret: %d %s, want a 400 that does not quote it", masked.status, masked.body)
			}
		})
	}
}

// Files, secrets and steps that each pass their own limit can together take
// a record over DynamoDB's 400 KB: the request is a 413 naming the record
// and its parts, nothing is recorded and nothing starts.
func TestRecordOverTheItemLimitIsRefused(t *testing.T) {
	e := newEnv(t, testPool("p", 0, 2))
	secrets := map[string]string{}
	for i := range 4 {
		secrets[fmt.Sprint("KEY_", i)] = strings.Repeat(fmt.Sprint(i), 30<<10)
	}
	big := stage.Spec{
		ID: "big", Pool: "p", Secrets: secrets,
		Files: []agentapi.File{{Path: "blob", Data: bytes.Repeat([]byte{0xfe}, 250<<10)}},
	}
	a := e.do(t, "POST", "/v1/stages", big, false)
	if a.status != http.StatusRequestEntityTooLarge {
		t.Fatalf("create: %d %s, want 413", a.status, a.body)
	}
	for _, want := range []string{"the record of stage big would be", "settings (env, files, steps)", "secrets (sealed)", "fetch large files in a step"} {
		if !strings.Contains(a.errorMessage(), want) {
			t.Errorf("the message lacks %q: %s", want, a.errorMessage())
		}
	}
	if strings.Contains(string(a.body), secrets["KEY_1"][:64]) {
		t.Errorf("the message quotes a secret")
	}
	if got := e.do(t, "GET", "/v1/stages/big", nil, false); got.status != http.StatusNotFound {
		t.Errorf("after the refusal: %d %s, want no stage", got.status, got.body)
	}
	if calls := e.execs.started(); len(calls) != 0 {
		t.Errorf("%d executions started for a refused stage", len(calls))
	}

	// Each group of an open stage is a record of its own: one too large is
	// refused, and the stage goes on.
	if a := e.do(t, "POST", "/v1/stages", stage.Spec{ID: "open", Pool: "p"}, true); a.status != http.StatusCreated {
		t.Fatalf("create: %d %s", a.status, a.body)
	}
	var steps []stage.Step
	for i := range 40 {
		s := script(strings.Repeat("echo padding; ", 9<<10/14))
		if i < 2 {
			s.Secrets = map[string]string{"STEP_KEY": strings.Repeat(fmt.Sprint(i), 30<<10)}
		}
		steps = append(steps, stage.Step{ID: fmt.Sprint("step-", i), Step: s})
	}
	a = e.do(t, "POST", "/v1/stages/open/groups", stage.Group{Steps: steps}, false)
	if a.status != http.StatusRequestEntityTooLarge || !strings.Contains(a.errorMessage(), "the record of group 0 of stage open would be") {
		t.Fatalf("add a group: %d %s, want a 413 naming the group", a.status, a.body)
	}
	if a := e.do(t, "POST", "/v1/stages/open/groups", stage.Group{Steps: steps[:2]}, true); a.status != http.StatusCreated && a.status != http.StatusOK {
		t.Fatalf("a group that fits, after: %d %s", a.status, a.body)
	}
}
