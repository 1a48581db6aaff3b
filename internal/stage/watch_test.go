package stage_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/slipway-ci/slipway/internal/stage"
)

// The watchdog hands to the release a stage whose execution ended while
// the stage did not (the status change never delivered), and leaves alone
// one whose execution runs.
func TestWatchdogReleasesAStageWhoseExecutionEnded(t *testing.T) {
	e := newEnv(t, testPool("p", 0, 2))
	for _, id := range []string{"ended", "running"} {
		if a := e.do(t, "POST", "/v1/stages", stage.Spec{ID: id, Pool: "p"}, true); a.status != http.StatusCreated {
			t.Fatalf("create %s: %d %s", id, a.status, a.body)
		}
	}
	for _, call := range e.execs.started() {
		if strings.HasPrefix(aws.ToString(call.Name), "ended_") {
			e.execs.end(aws.ToString(call.Name))
		}
	}
	// The watchdog looks past the grace (5 minutes): with a clock of its own
	// that far ahead, not by waiting.
	later := *e.deps
	later.Now = func() time.Time { return time.Now().Add(10 * time.Minute) }
	got, err := stage.NewWatchdog(&later).Check(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if got.Checked != 2 || len(got.Stuck) != 1 || got.Stuck[0] != "ended: its execution ended SUCCEEDED while the stage did not" {
		t.Fatalf("watched %+v", got)
	}
	var in stage.CleanupInput
	calls := e.invoker.invoked()
	if len(calls) != 1 || aws.ToString(calls[0].FunctionName) != "cleanup" || json.Unmarshal(calls[0].Payload, &in) != nil ||
		in.StageID != "ended" || in.Stuck == "" {
		t.Fatalf("invoked %+v", calls)
	}
	// The release it asks for ends the stage error, with the reason.
	if _, err := stage.NewCleanup(e.deps).Handle(t.Context(), in); err != nil {
		t.Fatal(err)
	}
	st := e.status(t, "ended")
	if st.Result != stage.Errored || st.Reason != "the stage was not progressing: its execution ended SUCCEEDED while the stage did not" || st.Phase != stage.PhaseReleased {
		t.Errorf("after the release: %+v", st)
	}
}

// A create whose execution does not start answers 503, even when the early
// bind beside the start bound the stage: a retry starts the execution and
// finds the stage bound; without one, the watchdog releases the stage and
// its VM.
func TestAStageBoundWhoseExecutionDidNotStart(t *testing.T) {
	e := newEnv(t, testPool("p", 2, 2))
	e.warmUp(t, "p", 2)
	e.execs.mu.Lock()
	e.execs.failing = 2
	e.execs.mu.Unlock()
	for _, id := range []string{"retried", "abandoned"} {
		a := e.do(t, "POST", "/v1/stages?wait=10s", stage.Spec{ID: id, Pool: "p"}, true)
		if a.status != http.StatusServiceUnavailable || !strings.Contains(a.errorMessage(), "repeat the request") {
			t.Fatalf("create %s with a failing start: %d %s", id, a.status, a.body)
		}
	}
	for _, id := range []string{"retried", "abandoned"} {
		if st, err := e.deps.Stages.GetStage(t.Context(), id); err != nil || st.BoundAt.IsZero() {
			t.Fatalf("stage %s: %+v %v, want it bound beside the failed start", id, st, err)
		}
	}
	a := e.do(t, "POST", "/v1/stages?wait=10s", stage.Spec{ID: "retried", Pool: "p"}, true)
	var retried stage.Status
	if a.status != http.StatusOK {
		t.Fatalf("the retry: %d %s", a.status, a.body)
	}
	if a.decode(t, &retried); retried.Phase != stage.PhaseRunning {
		t.Fatalf("the retry: %+v, want the stage bound", retried)
	}
	later := *e.deps
	later.Now = func() time.Time { return time.Now().Add(10 * time.Minute) }
	got, err := stage.NewWatchdog(&later).Check(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Stuck) != 1 || got.Stuck[0] != "abandoned: its execution never started" {
		t.Fatalf("watched %+v, want only the abandoned stage stuck", got)
	}
	var in stage.CleanupInput
	calls := e.invoker.invoked()
	if len(calls) != 1 || json.Unmarshal(calls[0].Payload, &in) != nil || in.StageID != "abandoned" {
		t.Fatalf("invoked %+v", calls)
	}
	if _, err := stage.NewCleanup(e.deps).Handle(t.Context(), in); err != nil {
		t.Fatal(err)
	}
	if st := e.status(t, "abandoned"); st.Phase != stage.PhaseReleased {
		t.Errorf("the abandoned stage after the release: %+v", st)
	}
}
