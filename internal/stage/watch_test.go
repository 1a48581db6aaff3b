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
