//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/agent/agenttest"
	"github.com/slipway-ci/slipway/agent/client"
)

// The agent benchmarks run the real binary, built as `make build` builds it,
// and talk to it over one kept-alive mutual TLS connection per concurrent
// call. Run them with -benchtime 1x: each measures what it measures itself
// and prints one `BENCH <name> <value> <unit>` line.

var buildOnce = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "slipway-bench-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "slipway-agent")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build agent: %w\n%s", err, out)
	}
	return bin, nil
})

func agentBinary(b *testing.B) string {
	b.Helper()
	bin, err := buildOnce()
	if err != nil {
		b.Fatal(err)
	}
	return bin
}

// bench prints a BENCH line with the machine's state at that moment: the
// load average and the p50 of a bare fork/exec of true, measured in this
// run, so that a reader can tell a slow machine from a slow agent.
func bench(name string, value float64, unit string, extra ...string) {
	extra = append(extra, "load1="+loadAverage(), fmt.Sprintf("forkexec_p50_ms=%.3f", ms(forkExecP50())))
	fmt.Printf("BENCH %s %.3f %s %s\n", name, value, unit, strings.Join(extra, " "))
}

func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Fields(string(data))[0]
}

var forkExecP50 = sync.OnceValue(func() time.Duration {
	truePath, err := exec.LookPath("true")
	if err != nil {
		return 0
	}
	var runs []time.Duration
	for range 101 {
		start := time.Now()
		if exec.Command(truePath).Run() != nil {
			return 0
		}
		runs = append(runs, time.Since(start))
	}
	return median(runs)
})

// benchWorkDir is a work dir on the disk the repository is on. Not in /tmp:
// on this kind of machine, creating a file in /tmp costs about 0.8 ms against
// 20 µs elsewhere on the same disk, and a step creates its log file.
func benchWorkDir(b *testing.B) string {
	b.Helper()
	root, err := filepath.Abs("../.cache")
	if err != nil {
		b.Fatal(err)
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		b.Fatal(err)
	}
	dir, err := os.MkdirTemp(root, "bench-work-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func startBound(b *testing.B, stage agentapi.Stage, flags ...string) *agenttest.Process {
	b.Helper()
	p := agenttest.StartBinary(b, agentBinary(b), append(flags, "--work-dir", benchWorkDir(b))...)
	if _, err := p.Client.BindStage(context.Background(), &stage); err != nil {
		b.Fatal(err)
	}
	return p
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkAgentStepRoundtrip: start + wait for a host step running `true`,
// against a bare fork/exec of `true` from Go, interleaved in the same run so
// that both see the same machine.
func BenchmarkAgentStepRoundtrip(b *testing.B) {
	p := startBound(b, agentapi.Stage{ID: "bench"})
	ctx := context.Background()
	truePath, err := exec.LookPath("true")
	if err != nil {
		b.Fatal(err)
	}
	spec := &agentapi.Step{Command: []string{truePath}}
	const warmup, rounds = 50, 1000
	var agent, fork []time.Duration
	for i := range warmup + rounds {
		start := time.Now()
		st, err := p.Client.RunStep(ctx, "bench", "s"+strconv.Itoa(i), spec)
		took := time.Since(start)
		if err != nil || st.State != agentapi.StepSucceeded {
			b.Fatalf("step %d: %v %+v", i, err, st)
		}
		start = time.Now()
		if err := exec.Command(truePath).Run(); err != nil {
			b.Fatal(err)
		}
		forkTook := time.Since(start)
		if i >= warmup {
			agent, fork = append(agent, took), append(fork, forkTook)
		}
	}
	a, f := median(agent), median(fork)
	bench("agent_step_roundtrip_p50", ms(a), "ms", fmt.Sprintf("rounds=%d", rounds))
	bench("agent_step_roundtrip_ratio", float64(a)/float64(f), "x", fmt.Sprintf("fork_exec_p50_ms=%.3f", ms(f)))
}

type countingDiscard struct{ n atomic.Int64 }

func (c *countingDiscard) Write(p []byte) (int, error) {
	c.n.Add(int64(len(p)))
	return len(p), nil
}

// peakRSS is the process's high-water resident set (VmHWM), in bytes.
func peakRSS(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}

// BenchmarkAgentLogThroughput: a step writes 1 GiB in 64-byte lines; a
// client follows it through /logs with 10 secrets masked. The agent's peak
// RSS over the whole run is the memory figure.
func BenchmarkAgentLogThroughput(b *testing.B) {
	const total = 1 << 30
	secrets := map[string]string{}
	for i := range 10 {
		secrets[fmt.Sprintf("SECRET_%d", i)] = fmt.Sprintf("s3cr3t-value-%02d-%x", i, i*7919)
	}
	p := startBound(b, agentapi.Stage{ID: "bench", Secrets: secrets}, "--max-log-bytes", strconv.Itoa(2*total))
	ctx := context.Background()
	line := strings.Repeat("0123456789abcdef", 4)[:63]
	spec := &agentapi.Step{Script: fmt.Sprintf("yes %s | head -c %d", line, total)}
	start := time.Now()
	if _, err := p.Client.StartStep(ctx, "bench", "big", spec); err != nil {
		b.Fatal(err)
	}
	var got countingDiscard
	n, err := p.Client.StreamLogs(ctx, "bench", "big", 0, &got)
	took := time.Since(start)
	if err != nil {
		b.Fatal(err)
	}
	if n != total {
		b.Fatalf("read %d bytes, want %d", n, total)
	}
	rss, err := peakRSS(p.Cmd.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}
	bench("agent_log_throughput", float64(total)/1e6/took.Seconds(), "MB/s", "secrets=10", "line_bytes=64")
	bench("agent_rss_1gib_output", float64(rss)/(1<<20), "MiB", "measure=VmHWM")
}

// BenchmarkAgentParallel50: 50 steps of `sleep 1` started at once, until all
// are seen finished, through the client the orchestrator uses for a group
// (Multiplexed: one HTTP/2 connection). Interleaved with it, in rounds: the
// same steps over HTTP/1.1 (a connection each), and the floor, 50 `sleep 1`
// processes started straight from this process: on 2 cores the kernel's
// process creation, not the agent, sets most of the figure.
func BenchmarkAgentParallel50(b *testing.B) {
	p := startBound(b, agentapi.Stage{ID: "bench"})
	// Warm the connections as a busy orchestrator's would be.
	for _, c := range []*client.Client{p.Client, p.Client.Multiplexed()} {
		var warm sync.WaitGroup
		for range 50 {
			warm.Go(func() { _, _ = c.Health(context.Background()) })
		}
		warm.Wait()
	}
	var walls, http1, floors []time.Duration
	for round := range parallelRounds {
		inTurn(round, []func(){
			func() { walls = append(walls, parallel50(b, p.Client.Multiplexed(), fmt.Sprintf("p%d-", round))) },
			func() { http1 = append(http1, parallel50(b, p.Client, fmt.Sprintf("h%d-", round))) },
		})
		floors = append(floors, spawn50(b))
	}
	bench("agent_parallel50_wall", median(walls).Seconds(), "s",
		fmt.Sprintf("http1_s=%.3f", median(http1).Seconds()), fmt.Sprintf("spawn_floor_s=%.3f", median(floors).Seconds()))
}

// BenchmarkAgentParallel50Cold: the same 50 steps from clients that have no
// connection yet, as the orchestrator's first group on a new VM is: what
// the handshakes cost. Each round has new clients.
func BenchmarkAgentParallel50Cold(b *testing.B) {
	p := startBound(b, agentapi.Stage{ID: "bench"})
	// Each round's clients are closed after it, as a VM's are at its end:
	// the agent holds at most server.MaxConnections, and 50 idle HTTP/1.1
	// connections a round would reach it.
	cold := func(multiplexed bool, prefix string) time.Duration {
		c := (&agenttest.Agent{PKI: p.PKI}).NewClient(b, p.Addr)
		defer c.Close()
		if multiplexed {
			return parallel50(b, c.Multiplexed(), prefix)
		}
		return parallel50(b, c, prefix)
	}
	var walls, http1 []time.Duration
	for round := range parallelRounds {
		inTurn(round, []func(){
			func() { walls = append(walls, cold(true, fmt.Sprintf("c%d-", round))) },
			func() { http1 = append(http1, cold(false, fmt.Sprintf("h%d-", round))) },
		})
	}
	bench("agent_parallel50_cold_wall", median(walls).Seconds(), "s", fmt.Sprintf("http1_s=%.3f", median(http1).Seconds()))
}

// parallelRounds: medians of 6, the two protocols taking turns to go first,
// since whichever runs second in a round is often a little faster.
const parallelRounds = 6

// inTurn runs both, the first first in even rounds and second in odd ones.
func inTurn(round int, both []func()) {
	if round%2 == 1 {
		both[0], both[1] = both[1], both[0]
	}
	for _, run := range both {
		run()
	}
}

// parallel50 runs 50 `sleep 1` steps at once through c and returns the
// wall time until the last one answered.
func parallel50(b *testing.B, c *client.Client, prefix string) time.Duration {
	b.Helper()
	return fifty(b, func(i int) error {
		st, err := c.RunStep(context.Background(), "bench", prefix+strconv.Itoa(i), &agentapi.Step{Command: []string{"sleep", "1"}})
		if err == nil && st.State != agentapi.StepSucceeded {
			err = fmt.Errorf("step %s", st.State)
		}
		return err
	})
}

// spawn50 starts 50 `sleep 1` processes at once and returns the wall time
// until the last one was reaped.
func spawn50(b *testing.B) time.Duration {
	b.Helper()
	return fifty(b, func(int) error { return exec.Command("sleep", "1").Run() })
}

// fifty runs do 50 times at once and returns the wall time until the last
// returned; any error fails the benchmark.
func fifty(b *testing.B, do func(i int) error) time.Duration {
	b.Helper()
	start := time.Now()
	var wg sync.WaitGroup
	var failed atomic.Int64
	var first atomic.Value
	for i := range 50 {
		wg.Go(func() {
			if err := do(i); err != nil {
				failed.Add(1)
				first.CompareAndSwap(nil, err.Error())
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	if failed.Load() > 0 {
		b.Fatalf("%d of 50 failed, the first: %v", failed.Load(), first.Load())
	}
	return took
}

// BenchmarkAgentBinarySize: the linux/amd64 agent, stripped, in MB (10^6 bytes).
func BenchmarkAgentBinarySize(b *testing.B) {
	info, err := os.Stat(agentBinary(b))
	if err != nil {
		b.Fatal(err)
	}
	bench("agent_binary_size", float64(info.Size())/1e6, "MB", "os=linux", "arch=amd64")
}
