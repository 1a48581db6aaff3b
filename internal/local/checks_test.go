package local_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"slices"
	"testing"

	"github.com/slipway-ci/slipway/internal/metrics"
)

// stageMetrics is what each metric the stage functions emit must be.
var stageMetrics = map[string]struct {
	unit metrics.Unit
	dims []string
}{
	metrics.LeaseWaitMs:     {metrics.Milliseconds, []string{metrics.DimDeployment, metrics.DimPool}},
	metrics.WarmHit:         {metrics.Count, []string{metrics.DimDeployment, metrics.DimPool}},
	metrics.ColdStart:       {metrics.Count, []string{metrics.DimDeployment, metrics.DimPool}},
	metrics.StepOverheadMs:  {metrics.Milliseconds, []string{metrics.DimDeployment, metrics.DimPool}},
	metrics.ReleaseFailures: {metrics.Count, []string{metrics.DimDeployment, metrics.DimPool}},
	metrics.StageSeconds:    {metrics.Seconds, []string{metrics.DimDeployment, metrics.DimPool, metrics.DimResult}},
}

// checkMetrics validates every EMF line against the specification, checks
// each stage metric's unit and dimensions, and that the stages in pools
// (stage id → pool) produced the ones a stage always does.
func checkMetrics(t *testing.T, lines []byte, pools map[string]string) {
	t.Helper()
	type seen struct {
		pool, result string
		value        float64
	}
	got := map[string][]seen{}
	sc := bufio.NewScanner(bytes.NewReader(lines))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if err := metrics.Validate(line); err != nil {
			t.Errorf("EMF line %s: %v", line, err)
			continue
		}
		var doc struct {
			AWS struct {
				CloudWatchMetrics []struct {
					Namespace  string
					Dimensions [][]string
					Metrics    []struct{ Name, Unit string }
				}
			} `json:"_aws"`
			Pool, Result, Deployment string
		}
		var values map[string]any
		if err := json.Unmarshal(line, &doc); err != nil {
			t.Fatal(err)
		}
		_ = json.Unmarshal(line, &values)
		for _, d := range doc.AWS.CloudWatchMetrics {
			if d.Namespace != metrics.Namespace || doc.Deployment != "local" {
				t.Errorf("namespace %s, deployment %s", d.Namespace, doc.Deployment)
			}
			for _, m := range d.Metrics {
				want, ok := stageMetrics[m.Name]
				if !ok {
					continue // the keeper's, checked in its own tests
				}
				if m.Unit != string(want.unit) || len(d.Dimensions) != 1 || !slices.Equal(d.Dimensions[0], want.dims) {
					t.Errorf("%s: unit %s, dimensions %v; want %s, %v", m.Name, m.Unit, d.Dimensions, want.unit, want.dims)
				}
				v, _ := values[m.Name].(float64)
				got[m.Name] = append(got[m.Name], seen{doc.Pool, doc.Result, v})
			}
		}
	}
	for _, pool := range pools {
		for _, name := range []string{metrics.LeaseWaitMs, metrics.StepOverheadMs, metrics.StageSeconds} {
			if !slices.ContainsFunc(got[name], func(s seen) bool { return s.pool == pool }) {
				t.Errorf("no %s for pool %s", name, pool)
			}
		}
	}
	if !slices.ContainsFunc(got[metrics.ColdStart], func(s seen) bool { return s.pool == "metrics" && s.value == 1 }) ||
		!slices.ContainsFunc(got[metrics.WarmHit], func(s seen) bool { return s.pool == "misc" && s.value == 1 }) {
		t.Errorf("warm hits %v, cold starts %v", got[metrics.WarmHit], got[metrics.ColdStart])
	}
	byResult := func(pool, result string) bool {
		return slices.ContainsFunc(got[metrics.StageSeconds], func(s seen) bool { return s.pool == pool && s.result == result && s.value > 0 })
	}
	if !byResult("misc", "failed") || !byResult("metrics", "succeeded") {
		t.Errorf("StageSeconds by result: %v", got[metrics.StageSeconds])
	}
}
