package stage

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/internal/stage/record"
)

// A group's end is one transaction: its steps' results, each trimmed to its
// share, fit DynamoDB's 4 MB together and 400 KB each, whatever the steps
// returned, and keep what matters most (state, exit code, test totals).
func TestGroupResultsFitOneTransaction(t *testing.T) {
	exit := 1
	outputs := map[string]string{}
	for i := range agentapi.MaxOutputs {
		outputs[fmt.Sprint("OUT_", i)] = strings.Repeat("v", 2<<10)
	}
	var failures []agentapi.TestFailure
	for i := range agentapi.MaxReportFailures {
		failures = append(failures, agentapi.TestFailure{Name: fmt.Sprint("Test", i), Message: strings.Repeat("m", 500), Output: strings.Repeat("o", 4<<10)})
	}
	heavy := StepStatus{
		ID: "s", State: Failed, ExitCode: &exit, Outputs: outputs, Error: strings.Repeat("e", 10<<10),
		Tests: &agentapi.TestReport{Files: 3, Tests: 900, Failed: 50, Failures: failures},
	}
	for _, steps := range []int{1, 10, 25, record.MaxStepsPerGroup} {
		limit := resultLimit(steps)
		if limit*steps > record.MaxTransactBytes-(512<<10) || limit > record.MaxItemBytes/2 {
			t.Fatalf("%d steps get %d bytes each: over a transaction's or an item's limit", steps, limit)
		}
		rec := heavy.record(limit)
		if len(rec.Result) > limit {
			t.Errorf("%d steps: a result of %d bytes, over its %d", steps, len(rec.Result), limit)
		}
		var kept stepResult
		if err := json.Unmarshal(rec.Result, &kept); err != nil {
			t.Fatal(err)
		}
		if rec.State != Failed || kept.ExitCode == nil || *kept.ExitCode != 1 || kept.Tests == nil || kept.Tests.Tests != 900 || kept.Tests.Failed != 50 {
			t.Errorf("%d steps: the result lost its state, exit code or totals: %s", steps, rec.Result[:min(len(rec.Result), 300)])
		}
		if !strings.Contains(string(rec.Result), "dropped") {
			t.Errorf("%d steps: the result does not say what it dropped", steps)
		}
	}
	// A small result is kept whole.
	light := StepStatus{ID: "s", State: Succeeded, Outputs: map[string]string{"A": "1"}}
	var kept stepResult
	if err := json.Unmarshal(light.record(resultLimit(record.MaxStepsPerGroup)).Result, &kept); err != nil || kept.Outputs["A"] != "1" {
		t.Errorf("a small result: %+v %v", kept, err)
	}
}
