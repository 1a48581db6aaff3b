package harnessrunner

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http/httptest"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/internal/delegate"
	"github.com/slipway-ci/slipway/internal/local"
	"github.com/slipway-ci/slipway/internal/local/localtest"
)

// Variables that put drone-runner-aws beside the drop-in in BenchmarkDropIn:
// the URL of the runner in delegate mode, and the address of the lite-engine
// that serves its noop driver's warm "VM" (a new VM is a new certificate
// there). docs/benchmarks.md's notes say how the runner is
// built and run.
const (
	benchRunnerEnv   = "SLIPWAY_BENCH_RUNNER"
	benchRunnerVMEnv = "SLIPWAY_BENCH_RUNNER_VM"
)

// BenchmarkDropIn: stages through the drop-in on slipway local with the
// delegate's own bodies (testdata/client), one after another: a warm setup
// (an idle VM waits, as a warm pool keeps one), `true` Run steps on the VM
// and destroy, each timed as the delegate waits for it. A step's overhead is
// its round trip less its own run as the agent timed it (the group's start
// through the state machine, the long-polls, the drop-in). With
// SLIPWAY_BENCH_RUNNER set, each round also runs on drone-runner-aws with
// the same bodies, interleaved, and the ratios are printed. Run with
// -benchtime 1x.
func BenchmarkDropIn(b *testing.B) {
	_, api := localtest.Deployment(b, local.LocalPool("linux", 1, 2))
	srv := httptest.NewServer((&Runner{API: api}).Handler())
	b.Cleanup(srv.Close)
	dropIn := &benchTarget{name: "harness", url: srv.URL, ready: func() { waitIdle(b, api, "linux") }}
	targets := []*benchTarget{dropIn}
	var runner *benchTarget
	if url := os.Getenv(benchRunnerEnv); url != "" {
		vm := os.Getenv(benchRunnerVMEnv)
		if vm == "" {
			b.Fatalf("%s is set: set %s to the address of the lite-engine that serves its VM", benchRunnerEnv, benchRunnerVMEnv)
		}
		var served string
		runner = &benchTarget{name: "harness_runner", url: url, ready: func() { served = waitNewVM(b, vm, served) }}
		targets = append(targets, runner)
	}
	const rounds, stepsPerRound = 8, 3
	for b.Loop() {
		// A round each, untimed: the first stage through a process that
		// just started (a JIT's first compile, the first connections) is
		// not what a delegate sees all day.
		for _, t := range targets {
			t.round(b, api, fmt.Sprintf("bench-%d-warmup", time.Now().UnixNano()), stepsPerRound)
			t.setups, t.roundTrips, t.overheads, t.destroys = nil, nil, nil, nil
		}
		for r := range rounds {
			// Each goes first in half the rounds: the machine's drift
			// falls on both.
			order := slices.Clone(targets)
			if r%2 == 1 {
				slices.Reverse(order)
			}
			for _, t := range order {
				t.round(b, api, fmt.Sprintf("bench-%d-%d", time.Now().UnixNano(), r), stepsPerRound)
			}
		}
		for _, t := range targets {
			t.print(rounds)
		}
		if runner != nil {
			fmt.Printf("BENCH harness_vs_runner_setup %.2f ratio target<=1 drop_in=%.1f runner=%.1f\n",
				p50(dropIn.setups)/p50(runner.setups), p50(dropIn.setups), p50(runner.setups))
			fmt.Printf("BENCH harness_vs_runner_step %.2f ratio target<=1.5 drop_in=%.1f runner=%.1f\n",
				p50(dropIn.roundTrips)/p50(runner.roundTrips), p50(dropIn.roundTrips), p50(runner.roundTrips))
			fmt.Printf("BENCH harness_vs_runner_destroy %.2f ratio target<1 drop_in=%.1f runner=%.1f\n",
				p50(dropIn.destroys)/p50(runner.destroys), p50(dropIn.destroys), p50(runner.destroys))
		}
	}
}

// benchTarget is a runner API under measurement and what it measured.
type benchTarget struct {
	name, url string
	// ready waits, untimed, until a warm VM waits for the next setup.
	ready                                   func()
	setups, roundTrips, overheads, destroys []float64
}

// round runs one stage, runtimeID, of steps `true` steps.
func (t *benchTarget) round(b *testing.B, api *delegate.Client, runtimeID string, steps int) {
	ofStage := func(body []byte) []byte {
		return bytes.ReplaceAll(body, []byte("pZs1Hw3tTc2Qx9Lk0aB7_w"), []byte(runtimeID))
	}
	fill := map[string]string{"pool": "linux", "secret": testSecret, "log_url": "", "log_token": ""}
	t.ready()
	start := time.Now()
	if code := post(b, t.url+"/setup", ofStage(fixture(b, "client/setup.json", fill)), nil, ""); code != 200 {
		b.Fatalf("%s: setup: %d", t.name, code)
	}
	t.setups = append(t.setups, ms(time.Since(start)))
	for i := range steps {
		id := fmt.Sprintf("s%d", i)
		body := fixture(b, "client/step_run.json", withFill(map[string]string{"step": id, "script": "TAG=1", "log_key": id}))
		var answer PollStepResponse
		start := time.Now()
		if code := post(b, t.url+"/step", ofStage(body), &answer, ""); code != 200 || answer.Error != "" || !answer.Exited {
			b.Fatalf("%s: step: %d %+v", t.name, code, answer)
		}
		wall := time.Since(start)
		t.roundTrips = append(t.roundTrips, ms(wall))
		if t.name == "harness" {
			st, err := api.Step(context.Background(), stageID(runtimeID), id, 0)
			if err != nil {
				b.Fatal(err)
			}
			t.overheads = append(t.overheads, ms(wall-st.EndedAt.Sub(*st.StartedAt)))
		}
	}
	start = time.Now()
	if code := post(b, t.url+"/destroy", ofStage(fixture(b, "client/destroy.json", fill)), nil, ""); code != 200 {
		b.Fatalf("%s: destroy: %d", t.name, code)
	}
	t.destroys = append(t.destroys, ms(time.Since(start)))
}

func (t *benchTarget) print(rounds int) {
	fmt.Printf("BENCH %s_setup_warm_p50 %.1f ms max=%.1f rounds=%d\n", t.name, p50(t.setups), slices.Max(t.setups), rounds)
	overhead := ""
	if len(t.overheads) > 0 {
		overhead = fmt.Sprintf(" overhead_p50=%.1f", p50(t.overheads))
	}
	fmt.Printf("BENCH %s_step_roundtrip_p50 %.1f ms max=%.1f%s steps=%d\n",
		t.name, p50(t.roundTrips), slices.Max(t.roundTrips), overhead, len(t.roundTrips))
	fmt.Printf("BENCH %s_destroy_p50 %.1f ms max=%.1f rounds=%d\n", t.name, p50(t.destroys), slices.Max(t.destroys), rounds)
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

// waitNewVM waits until the lite-engine at addr presents a certificate other
// than last (the runner makes a CA and certificate per VM, so a new one is
// the next warm VM) and returns its digest. Only the server's certificate is
// read: the handshake's end, which needs a client certificate, is not awaited.
func waitNewVM(b *testing.B, addr, last string) string {
	b.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		var seen string
		conf := &tls.Config{
			InsecureSkipVerify: true, //nolint:gosec // only the certificate's digest is read
			VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
				seen = fmt.Sprintf("%x", sha256.Sum256(raw[0]))
				return nil
			},
		}
		if conn, err := tls.Dial("tcp", addr, conf); err == nil {
			_ = conn.Close()
		}
		if seen != "" && seen != last {
			return seen
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.Fatalf("no new VM at %s after 2 minutes", addr)
	return ""
}

func p50(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
