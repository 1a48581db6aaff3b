package harness

import (
	"bytes"
	"context"
	"fmt"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/internal/delegate"
	"github.com/slipway-ci/slipway/internal/local"
	"github.com/slipway-ci/slipway/internal/local/localtest"
)

// BenchmarkDropIn: stages through the drop-in on slipway local with the
// delegate's own bodies (testdata/client), one after another: a warm setup
// (an idle VM waits, as a warm pool keeps one), `true` Run steps on the VM
// and destroy, each timed as the delegate waits for it. A step's overhead is
// its round trip less its own run as the agent timed it (the group's start
// through the state machine, the long-polls, the drop-in). Run with
// -benchtime 1x.
func BenchmarkDropIn(b *testing.B) {
	_, api := localtest.Deployment(b, local.LocalPool("linux", 1, 2))
	srv := httptest.NewServer((&Runner{API: api}).Handler())
	b.Cleanup(srv.Close)
	const rounds, stepsPerRound = 8, 3
	fill := map[string]string{"pool": "linux", "secret": testSecret, "log_url": "", "log_token": ""}
	for b.Loop() {
		var setups, roundTrips, overheads, destroys []float64
		for r := range rounds {
			runtimeID := fmt.Sprintf("bench-%d-%d", time.Now().UnixNano(), r)
			ofStage := func(body []byte) []byte {
				return bytes.ReplaceAll(body, []byte("pZs1Hw3tTc2Qx9Lk0aB7_w"), []byte(runtimeID))
			}
			waitIdle(b, api, "linux")
			start := time.Now()
			if code := post(b, srv.URL+"/setup", ofStage(fixture(b, "client/setup.json", fill)), nil, ""); code != 200 {
				b.Fatalf("setup: %d", code)
			}
			setups = append(setups, ms(time.Since(start)))
			for i := range stepsPerRound {
				id := fmt.Sprintf("s%d", i)
				body := fixture(b, "client/step_run.json", withFill(map[string]string{"step": id, "script": "TAG=1", "log_key": id}))
				start := time.Now()
				if code := post(b, srv.URL+"/step", ofStage(body), nil, ""); code != 200 {
					b.Fatalf("step: %d", code)
				}
				wall := time.Since(start)
				st, err := api.Step(context.Background(), stageID(runtimeID), id, 0)
				if err != nil {
					b.Fatal(err)
				}
				roundTrips = append(roundTrips, ms(wall))
				overheads = append(overheads, ms(wall-st.EndedAt.Sub(*st.StartedAt)))
			}
			start = time.Now()
			if code := post(b, srv.URL+"/destroy", ofStage(fixture(b, "client/destroy.json", fill)), nil, ""); code != 200 {
				b.Fatalf("destroy: %d", code)
			}
			destroys = append(destroys, ms(time.Since(start)))
		}
		fmt.Printf("BENCH harness_setup_warm_p50 %.1f ms max=%.1f rounds=%d\n", p50(setups), slices.Max(setups), rounds)
		fmt.Printf("BENCH harness_step_roundtrip_p50 %.1f ms max=%.1f overhead_p50=%.1f steps=%d\n",
			p50(roundTrips), slices.Max(roundTrips), p50(overheads), len(roundTrips))
		fmt.Printf("BENCH harness_destroy_p50 %.1f ms max=%.1f rounds=%d\n", p50(destroys), slices.Max(destroys), rounds)
	}
}

// waitIdle waits, untimed, until the pool has an idle VM: the warm pool's
// refill after the last destroy.
func waitIdle(b *testing.B, api *delegate.Client, pool string) {
	b.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		pools, err := api.Pools(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		for _, p := range pools.Pools {
			if p.Name == pool && p.Idle > 0 {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.Fatalf("pool %s has no idle VM after 30 s", pool)
}

func p50(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
