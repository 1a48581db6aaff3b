package harness

import (
	"context"
	"fmt"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/internal/local"
	"github.com/slipway-ci/slipway/internal/local/localtest"
)

// BenchmarkDropInStep: `true` steps through POST /step on slipway local,
// one after another in one stage, as the delegate sends them. The round trip
// is what the delegate waits; the overhead is that less the step's own run
// as the agent timed it (the group's start through the state machine, the
// long-polls, the drop-in). Run with -benchtime 1x.
func BenchmarkDropInStep(b *testing.B) {
	_, api := localtest.Deployment(b, local.LocalPool("bench", 1, 2))
	srv := httptest.NewServer((&Runner{API: api}).Handler())
	b.Cleanup(srv.Close)
	const steps = 20
	for b.Loop() {
		runtimeID := fmt.Sprintf("bench-%d", time.Now().UnixNano())
		setup := fmt.Sprintf(`{"id": %q, "pool_id": "bench", "setup_request": {}}`, runtimeID)
		if code := post(b, srv.URL+"/setup", []byte(setup), nil, ""); code != 200 {
			b.Fatalf("setup: %d", code)
		}
		var roundTrip, overhead []float64
		for i := range steps {
			body := fmt.Sprintf(`{"stage_runtime_id": %q, "start_step_request": {"id": "s%d", "run": {"entrypoint": ["sh", "-c"], "commands": ["true"]}}}`, runtimeID, i)
			start := time.Now()
			if code := post(b, srv.URL+"/step", []byte(body), nil, ""); code != 200 {
				b.Fatalf("step: %d", code)
			}
			wall := time.Since(start)
			st, err := api.Step(context.Background(), stageID(runtimeID), fmt.Sprintf("s%d", i), 0)
			if err != nil {
				b.Fatal(err)
			}
			roundTrip = append(roundTrip, ms(wall))
			overhead = append(overhead, ms(wall-st.EndedAt.Sub(*st.StartedAt)))
		}
		if code := post(b, srv.URL+"/destroy", []byte(fmt.Sprintf(`{"id": %q}`, runtimeID)), nil, ""); code != 200 {
			b.Fatalf("destroy: %d", code)
		}
		slices.Sort(roundTrip)
		slices.Sort(overhead)
		fmt.Printf("BENCH harness_step_roundtrip_p50 %.1f ms max=%.1f overhead_p50=%.1f steps=%d\n",
			roundTrip[steps/2], roundTrip[steps-1], overhead[steps/2], steps)
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
