package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/internal/delegate"
	"github.com/slipway-ci/slipway/internal/local"
	"github.com/slipway-ci/slipway/internal/localaws"
	"github.com/slipway-ci/slipway/internal/pool"
	"github.com/slipway-ci/slipway/internal/stage"
)

// demoStages starts slipway local and runs two stages through the real
// state machine file: one the delegate gives group by group, reading its
// steps' logs live and its logs again from the archive after the release,
// that succeeds; one given whole whose first group fails, so its last group
// is skipped. Both end with their VM released.
func demoStages(ctx context.Context, out io.Writer, agentPath string, say func(string, ...any)) error {
	say("slipway local: the delegate API, the functions and the state machine on a local ASL engine")
	o := local.Options{
		Listen: "127.0.0.1:0", AgentPath: agentPath, Tick: 2 * time.Second,
		DynamoDBEndpoint: os.Getenv(localaws.DynamoDBEndpointEnv), KMSEndpoint: os.Getenv(localaws.KMSEndpointEnv),
		Pools: []pool.Pool{local.LocalPool("demo", 1, 2)},
	}
	root, err := local.RepoRoot(".")
	if err != nil {
		return err
	}
	o.FromRepo(root)
	rt, err := local.Start(ctx, o)
	if err != nil {
		return err
	}
	defer rt.Close()
	fmt.Fprintf(out, "delegate API on %s, state machine %s\n", rt.APIURL, rt.StateMachineARN)
	api, err := delegate.New(rt.APIURL, delegate.Options{})
	if err != nil {
		return err
	}
	if err := waitIdle(ctx, api, "demo", 1); err != nil {
		return err
	}

	say("stage demo-pass: groups given one at a time, logs read while the VM lives")
	st, err := api.Create(ctx, &stage.Spec{
		ID: "demo-pass", Pool: "demo",
		Env:     map[string]string{"APP": "slipway-demo"},
		Secrets: map[string]string{"DEPLOY_KEY": "dk-5ecret-demo"},
		Groups: []stage.Group{{Steps: []stage.Step{
			{ID: "compile", Step: agentapi.Step{Script: `echo "compiling $APP"; echo "BUILD=42" >> "$SLIPWAY_OUTPUT"`, Outputs: []string{"BUILD"}}},
			{ID: "lint", Step: agentapi.Step{Script: `echo "lint: 0 problems"; echo "key: $DEPLOY_KEY"`}},
		}}},
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "created: phase %s\n", st.Phase)
	for _, step := range []string{"compile", "lint"} {
		if err := showStep(ctx, out, api, "demo-pass", step); err != nil {
			return err
		}
	}
	if _, err := api.AddGroup(ctx, "demo-pass", &stage.Group{Final: true, Steps: []stage.Step{
		{ID: "test", Step: agentapi.Step{Script: `echo "testing build $BUILD_NUMBER"; echo "ok  all 12 tests"`, Env: map[string]string{"BUILD_NUMBER": "42"}}},
	}}); err != nil {
		return err
	}
	fmt.Fprintln(out, "added the final group: the stage ends with it")
	if err := showStage(ctx, out, api, "demo-pass"); err != nil {
		return err
	}
	// The VM is gone: the logs come from the archive, the same bytes.
	fmt.Fprintln(out, "after the release, from the log archive:")
	for _, step := range []string{"lint", "test"} {
		if err := showLog(ctx, out, api, "demo-pass", step); err != nil {
			return err
		}
	}

	say("stage demo-fail: all groups given at once; a step fails, so the later group is skipped")
	if err := waitIdle(ctx, api, "demo", 1); err != nil { // refill replaces the VM demo-pass used
		return err
	}
	if _, err := api.Create(ctx, &stage.Spec{ID: "demo-fail", Pool: "demo", Groups: []stage.Group{
		{Steps: []stage.Step{{ID: "unit", Step: agentapi.Step{Script: "echo 'FAIL TestParse (0.01s)' >&2; exit 2"}}}},
		{Final: true, Steps: []stage.Step{{ID: "publish", Step: agentapi.Step{Script: "echo never runs"}}}},
	}}); err != nil {
		return err
	}
	return showStage(ctx, out, api, "demo-fail")
}

// waitIdle waits until refill has brought up n idle VMs in the pool.
func waitIdle(ctx context.Context, api *delegate.Client, poolName string, n int) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		pools, err := api.Pools(ctx)
		if err != nil {
			return err
		}
		for _, p := range pools.Pools {
			if p.Name == poolName && p.Idle >= n {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pool %s: no idle VM within a minute", poolName)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// showStep waits for the step to end and prints its result and log.
func showStep(ctx context.Context, out io.Writer, api *delegate.Client, id, step string) error {
	var s *stage.StepStatus
	var err error
	for s == nil || s.State == stage.StatePending || s.State == stage.StateRunning {
		if s, err = api.Step(ctx, id, step, stage.MaxWait); err != nil {
			return err
		}
	}
	if err := showLog(ctx, out, api, id, step); err != nil {
		return err
	}
	fmt.Fprintf(out, "  => %s\n", describeStep(s))
	return nil
}

// showLog prints a step's log.
func showLog(ctx context.Context, out io.Writer, api *delegate.Client, id, step string) error {
	chunk, err := api.Logs(ctx, id, step, 0)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "step %s:\n", step)
	for line := range strings.Lines(string(chunk.Data)) {
		fmt.Fprintf(out, "  | %s", strings.TrimSuffix(line, "\n")+"\n")
	}
	return nil
}

// showStage follows the stage until its release and prints its timeline.
func showStage(ctx context.Context, out io.Writer, api *delegate.Client, id string) error {
	phase := ""
	st, err := api.Follow(ctx, id, func(st *stage.Status) {
		if st.Phase != phase {
			phase = st.Phase
			fmt.Fprintf(out, "phase %s\n", phase)
		}
	})
	if err != nil {
		return err
	}
	t := st.Timings
	since := func(at *time.Time) string {
		if at == nil {
			return "-"
		}
		return "+" + at.Sub(t.QueuedAt).Round(time.Millisecond).String()
	}
	fmt.Fprintf(out, "result %s", st.Result)
	if st.Reason != "" {
		fmt.Fprintf(out, " (%s)", st.Reason)
	}
	fmt.Fprintf(out, " on %s\ntimeline: queued, leased %s, bound %s, ended %s, released %s\n",
		st.VM, since(t.LeasedAt), since(t.BoundAt), since(t.EndedAt), since(t.ReleasedAt))
	for _, g := range st.Groups {
		fmt.Fprintf(out, "  group %d %s:", g.Index, g.State)
		for i := range g.Steps {
			fmt.Fprintf(out, " %s %s;", g.Steps[i].ID, describeStep(&g.Steps[i]))
		}
		fmt.Fprintln(out)
	}
	return nil
}

func describeStep(s *stage.StepStatus) string {
	d := s.State
	if s.ExitCode != nil {
		d += fmt.Sprintf(", exit code %d", *s.ExitCode)
	}
	if s.StartedAt != nil && s.EndedAt != nil {
		d += ", " + s.EndedAt.Sub(*s.StartedAt).Round(time.Millisecond).String()
	}
	if len(s.Outputs) > 0 {
		d += fmt.Sprintf(", outputs %v", s.Outputs)
	}
	if s.Error != "" {
		d += ", " + s.Error
	}
	return d
}
