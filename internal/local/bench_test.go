package local_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/agent/agenttest"
	"github.com/slipway-ci/slipway/internal/awstest"
	"github.com/slipway-ci/slipway/internal/delegate"
	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/internal/local"
	"github.com/slipway-ci/slipway/internal/pool"
	"github.com/slipway-ci/slipway/internal/stage"
	warmpool "github.com/slipway-ci/slipway/internal/warm"
	"github.com/slipway-ci/slipway/statemachine"
)

// The benchmarks' runtime is their own: the default orchestration settings,
// and refill only when a release asks for it (the tick is an hour), so the
// request units and function time counted around a stage are the stage's.
var benched struct {
	once sync.Once
	rt   *local.Runtime
	err  error
	logs agenttest.Buffer
}

var benchPools = []pool.Pool{local.LocalPool("bench", 2, 4), local.LocalPool("long", 1, 2)}

// List prices in us-east-1 (December 2026) the cost figures use.
const (
	usdPerTransition = 0.025 / 1000      // Step Functions Standard
	usdPerGBSecond   = 0.0000133334      // Lambda, arm64
	usdPerInvocation = 0.20 / 1_000_000  // Lambda requests
	usdPerWRU        = 0.625 / 1_000_000 // DynamoDB on-demand writes
	usdPerRRU        = 0.125 / 1_000_000 // DynamoDB on-demand reads
	usdPerAPIRequest = 3.50 / 1_000_000  // API Gateway REST
	mib              = 1024.0            // MB per GB as Lambda counts
	defaultLongStep  = 5 * time.Minute   // stage_transitions_per_step_minute
	longStepEnv      = "SLIPWAY_BENCH_LONG_STEP"
	benchWarmSamples = 11
)

var benchIDs atomic.Int64

func benchRuntime(b *testing.B) (*local.Runtime, *delegate.Client) {
	b.Helper()
	ddb, kms := awstest.DynamoDBEndpoint(b), awstest.KMSEndpoint(b)
	benched.once.Do(func() {
		benched.rt, benched.err = startRuntime(local.Options{
			DynamoDBEndpoint: ddb, KMSEndpoint: kms, Pools: benchPools, Tick: time.Hour, Metrics: io.Discard, Logs: &benched.logs,
		})
	})
	if benched.err != nil {
		b.Fatal(benched.err)
	}
	b.Cleanup(func() {
		if b.Failed() {
			b.Logf("the runtime's log:\n%s", benched.logs.Bytes())
		}
	})
	api, err := delegate.New(benched.rt.APIURL, delegate.Options{})
	if err != nil {
		b.Fatal(err)
	}
	return benched.rt, api
}

// runStage creates a stage of groups one-step groups running script, the
// last final, and waits for its release.
func runStage(b *testing.B, api *delegate.Client, poolName string, groups int, script string) *stage.Status {
	b.Helper()
	spec := &stage.Spec{ID: fmt.Sprintf("bench-%d", benchIDs.Add(1)), Pool: poolName}
	for i := range groups {
		spec.Groups = append(spec.Groups, stage.Group{Final: i == groups-1, Steps: []stage.Step{{ID: fmt.Sprintf("s%d", i), Step: step(script)}}})
	}
	ctx := context.Background()
	if _, err := api.Create(ctx, spec, 0); err != nil {
		b.Fatal(err)
	}
	st, err := api.Follow(ctx, spec.ID, nil)
	if err != nil {
		b.Fatal(err)
	}
	if st.Result != stage.Succeeded {
		b.Fatalf("stage %s: %s (%s)", st.ID, st.Result, st.Reason)
	}
	return st
}

// entered counts the states the stage's execution entered: what Step
// Functions Standard bills as state transitions.
func entered(b *testing.B, rt *local.Runtime, id string) int {
	b.Helper()
	executionStatus(b, rt, id)
	n := 0
	for _, typ := range history(b, rt, id) {
		if strings.HasSuffix(typ, "StateEntered") {
			n++
		}
	}
	return n
}

// settle brings the pool back to its warm size, as the scheduled refill
// does on AWS, once what the last stage set off is over.
func settle(b *testing.B, rt *local.Runtime, name string) {
	b.Helper()
	want := 0
	for _, p := range benchPools {
		if p.Name == name {
			want = p.MinIdle
		}
	}
	deadline := time.Now().Add(time.Minute)
	for {
		quiet(rt)
		d, err := rt.Deployment.VMs.Depth(context.Background(), name)
		if err != nil {
			b.Fatal(err)
		}
		if d.ByState[lease.Idle] >= want {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("pool %s: not warm within a minute: %+v", name, d.ByState)
		}
		if err := rt.Invoke(context.Background(), statemachine.Refill, warmpool.Request{Pool: name}, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// quiet waits until no function has run for 300 ms: the asynchronous
// invocations a release makes are over.
func quiet(rt *local.Runtime) {
	last := rt.Usage()
	for stable := 0; stable < 3; {
		time.Sleep(100 * time.Millisecond)
		now := rt.Usage()
		if usageEqual(now, last) {
			stable++
		} else {
			stable = 0
		}
		last = now
	}
}

func usageEqual(a, b map[string]local.Usage) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func quantile(xs []float64, q float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// BenchmarkStageWarmAcquire: create → agent bound on a warm pool, and the
// states a one-step stage enters.
func BenchmarkStageWarmAcquire(b *testing.B) {
	rt, api := benchRuntime(b)
	for b.Loop() {
		var acquire, transitions []float64
		for range benchWarmSamples {
			settle(b, rt, "bench")
			st := runStage(b, api, "bench", 1, "true")
			acquire = append(acquire, ms(st.Timings.BoundAt.Sub(st.Timings.QueuedAt)))
			transitions = append(transitions, float64(entered(b, rt, st.ID)))
		}
		fmt.Printf("BENCH stage_warm_acquire_p50 %.1f ms p90=%.1f n=%d target=250\n", median(acquire), quantile(acquire, 0.9), len(acquire))
		fmt.Printf("BENCH stage_transitions_fixed %.0f transitions min=%.0f max=%.0f n=%d target=8\n",
			median(transitions), slices.Min(transitions), slices.Max(transitions), len(transitions))
	}
}

// BenchmarkStageStepOverhead: stages of 20 sequential `true` steps; what
// a step costs beyond its own run, and the states each added group enters.
func BenchmarkStageStepOverhead(b *testing.B) {
	rt, api := benchRuntime(b)
	const steps, stages = 20, 5
	for b.Loop() {
		settle(b, rt, "bench")
		one := entered(b, rt, runStage(b, api, "bench", 1, "true").ID)
		var overhead, perStep []float64
		for range stages {
			settle(b, rt, "bench")
			st := runStage(b, api, "bench", steps, "true")
			wall := st.Timings.EndedAt.Sub(*st.Timings.BoundAt)
			var run time.Duration
			for _, g := range st.Groups {
				s := g.Steps[0]
				run += s.EndedAt.Sub(*s.StartedAt)
			}
			overhead = append(overhead, ms((wall-run)/steps))
			perStep = append(perStep, float64(entered(b, rt, st.ID)-one)/(steps-1))
		}
		fmt.Printf("BENCH stage_step_overhead_p50 %.1f ms max=%.1f stages=%d steps=%d target=100\n", median(overhead), slices.Max(overhead), stages, steps)
		fmt.Printf("BENCH stage_transitions_per_step %.2f transitions max=%.2f target=2\n", median(perStep), slices.Max(perStep))
	}
}

// stageCost is what the control plane bills for what happened between two
// readings: the states entered, the functions' time and calls, DynamoDB's
// request units.
type stageCost struct {
	transitions     int
	gbSeconds       float64
	invocations     int
	apiCalls        int
	wru, rru        float64
	lambdaSeconds   map[string]float64
	usd, withAPIUSD float64
}

func costBetween(before, after map[string]local.Usage, readBefore, writeBefore, readAfter, writeAfter float64, transitions int) stageCost {
	c := stageCost{transitions: transitions, wru: writeAfter - writeBefore, rru: readAfter - readBefore, lambdaSeconds: map[string]float64{}}
	for _, f := range statemachine.Functions {
		billed := (after[f.Name].Billed - before[f.Name].Billed).Seconds()
		calls := after[f.Name].Invocations - before[f.Name].Invocations
		c.lambdaSeconds[f.Name] = billed
		c.gbSeconds += billed * float64(f.MemoryMB) / mib
		c.invocations += calls
		if f.Name == statemachine.API {
			c.apiCalls = calls
		}
	}
	c.usd = float64(c.transitions)*usdPerTransition + c.gbSeconds*usdPerGBSecond + float64(c.invocations)*usdPerInvocation +
		c.wru*usdPerWRU + c.rru*usdPerRRU
	c.withAPIUSD = c.usd + float64(c.apiCalls)*usdPerAPIRequest
	return c
}

// BenchmarkStageCost: a 10-step stage's control-plane bill, from the
// counts: transitions, Lambda GB-s (each function at its memory size, the
// delegate's API calls included), DynamoDB request units.
func BenchmarkStageCost(b *testing.B) {
	rt, api := benchRuntime(b)
	const steps = 10
	for b.Loop() {
		settle(b, rt, "bench")
		before := rt.Usage()
		rb, wb, _ := rt.Capacity.Totals()
		st := runStage(b, api, "bench", steps, "true")
		n := entered(b, rt, st.ID)
		quiet(rt)
		ra, wa, _ := rt.Capacity.Totals()
		c := costBetween(before, rt.Usage(), rb, wb, ra, wa, n)
		fmt.Printf("BENCH stage_lambda_gb_s_per_step %.4f GB-s steps=%d gb_s=%.3f init_s=%.3f rungroup_s=%.3f cleanup_s=%.3f api_s=%.3f refill_s=%.3f\n",
			c.gbSeconds/steps, steps, c.gbSeconds, c.lambdaSeconds["init"], c.lambdaSeconds[statemachine.RunGroup], c.lambdaSeconds["cleanup"], c.lambdaSeconds["api"], c.lambdaSeconds["refill"])
		fmt.Printf("BENCH stage_control_plane_usd %.7f usd steps=%d transitions=%d invocations=%d wru=%.1f rru=%.1f api_calls=%d with_api_gateway=%.7f\n",
			c.usd, steps, c.transitions, c.invocations, c.wru, c.rru, c.apiCalls, c.withAPIUSD)
	}
}

// BenchmarkStageLongStep: the states a long step's stage enters per minute
// of the step beyond a short stage's, and the share of the step's time a
// RunGroup holds a Lambda (its concurrency). The step lasts
// $SLIPWAY_BENCH_LONG_STEP (default 5m).
func BenchmarkStageLongStep(b *testing.B) {
	rt, api := benchRuntime(b)
	length := defaultLongStep
	if v := os.Getenv(longStepEnv); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Minute {
			b.Fatalf("%s=%q: want a duration of a minute or more", longStepEnv, v)
		}
		length = d
	}
	for b.Loop() {
		settle(b, rt, "long")
		one := entered(b, rt, runStage(b, api, "long", 1, "true").ID)
		settle(b, rt, "long")
		before := rt.Usage()
		st := runStage(b, api, "long", 1, fmt.Sprintf("sleep %d", int(length.Seconds())))
		n := entered(b, rt, st.ID)
		held := (rt.Usage()[statemachine.RunGroup].Billed - before[statemachine.RunGroup].Billed).Seconds()
		fmt.Printf("BENCH stage_transitions_per_step_minute %.2f transitions step=%s transitions=%d fixed=%d runs=%d lambda_share=%.3f\n",
			float64(n-one)/length.Minutes(), length, n, one, rt.Usage()[statemachine.RunGroup].Invocations-before[statemachine.RunGroup].Invocations,
			held/length.Seconds())
	}
}
