package demo

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/internal/busyboximage"
	"github.com/slipway-ci/slipway/internal/delegate"
	"github.com/slipway-ci/slipway/internal/local"
	"github.com/slipway-ci/slipway/internal/localaws"
	"github.com/slipway-ci/slipway/internal/pool"
	"github.com/slipway-ci/slipway/internal/stage"
	"github.com/slipway-ci/slipway/internal/stagecli"
)

// demoJUnit is what a test runner writes: one passing and one failing test.
const demoJUnit = `<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="com.example.CartTest" tests="2" failures="1" errors="0" skipped="0" time="0.012">
  <testcase name="addsItem" classname="com.example.CartTest" time="0.002"/>
  <testcase name="appliesDiscount" classname="com.example.CartTest" time="0.010">
    <failure message="expected: &lt;90&gt; but was: &lt;100&gt;" type="org.opentest4j.AssertionFailedError">org.opentest4j.AssertionFailedError: expected: &lt;90&gt; but was: &lt;100&gt;
	at com.example.CartTest.appliesDiscount(CartTest.java:31)</failure>
  </testcase>
</testsuite>`

// wholeStages is the whole system: slipway local with a pool of two VMs,
// `slipway stage run` of a passing stage (a host step, a container step, a
// step printing a secret, a step writing a test report) and of a failing
// one, a released stage's log read back from the archive, the pool before
// and after; then everything stops.
func wholeStages(ctx context.Context, out io.Writer, agentPath string, docker bool, say func(string, ...any)) error {
	say("slipway local: the delegate API, the functions, the state machine on a local ASL engine, a pool of 2 VMs")
	o := local.Options{
		Listen: "127.0.0.1:0", AgentPath: agentPath, Tick: 2 * time.Second,
		DynamoDBEndpoint: os.Getenv(localaws.DynamoDBEndpointEnv), KMSEndpoint: os.Getenv(localaws.KMSEndpointEnv),
		Pools: []pool.Pool{local.LocalPool("demo", 2, 3)},
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
	cli := &stagecli.Env{API: api, Out: out, Getenv: os.Getenv, LogPoll: 100 * time.Millisecond}
	if err := waitIdle(ctx, api, "demo", 2); err != nil {
		return err
	}
	say("slipway pools: refill has brought up the warm VMs")
	if _, err := stagecli.Pools(ctx, cli); err != nil {
		return err
	}

	say("slipway stage run: a passing stage; its secret shows masked, its test report is read")
	steps := []stage.Group{
		{Steps: []stage.Step{{ID: "host", Step: agentapi.Step{Script: `echo "building $APP on $(uname -s)"`}}}},
	}
	if docker {
		steps = append(steps, stage.Group{Steps: []stage.Step{{ID: "container", Step: agentapi.Step{
			Image: busyboximage.Tag, Pull: agentapi.PullNever, Script: `echo "in a container: $(ls /bin | wc -l) busybox applets"`,
		}}}})
	} else {
		fmt.Fprintln(out, "(no Docker engine: the container step is left out; `make demo` starts one)")
	}
	steps = append(steps,
		stage.Group{Steps: []stage.Step{{ID: "secret", Step: agentapi.Step{Script: `echo "deploying with key $DEPLOY_KEY"`}}}},
		stage.Group{Final: true, Steps: []stage.Step{{ID: "tests", Step: agentapi.Step{
			Script:  `mkdir -p build && cp fixtures/TEST-cart.xml build/ && echo "2 tests run"`,
			Reports: []string{"build/TEST-*.xml"},
		}}}},
	)
	code, err := stagecli.Run(ctx, cli, &stage.Spec{
		ID: "demo-pass", Pool: "demo", Env: map[string]string{"APP": "shop"},
		Secrets: map[string]string{"DEPLOY_KEY": "dk-5ecret-demo"},
		Files:   []agentapi.File{{Path: "fixtures/TEST-cart.xml", Data: []byte(demoJUnit)}},
		Groups:  steps,
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "exit code %d: the steps' exit codes decide the result; the report's failed test is shown, not judged\n", code)

	say("slipway stage run: a failing stage; the step after the failure is skipped")
	if err := waitIdle(ctx, api, "demo", 2); err != nil { // refill replaces the VM demo-pass used
		return err
	}
	code, err = stagecli.Run(ctx, cli, &stage.Spec{ID: "demo-fail", Pool: "demo", Groups: []stage.Group{
		{Steps: []stage.Step{{ID: "unit", Step: agentapi.Step{Script: "echo 'FAIL TestParse (0.01s)' >&2; exit 2"}}}},
		{Final: true, Steps: []stage.Step{{ID: "publish", Step: agentapi.Step{Script: "echo never runs"}}}},
	}})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "exit code %d\n", code)

	if err := waitIdle(ctx, api, "demo", 2); err != nil {
		return err
	}
	if err := harnessRunner(ctx, out, api, say); err != nil {
		return err
	}

	say("slipway stage logs demo-pass secret: its VM is gone; the log comes from the archive")
	if _, err := stagecli.Logs(ctx, cli, "demo-pass", "secret", false); err != nil {
		return err
	}
	if err := waitIdle(ctx, api, "demo", 2); err != nil {
		return err
	}
	say("slipway pools: both VMs used were terminated and replaced")
	if _, err := stagecli.Pools(ctx, cli); err != nil {
		return err
	}
	say("stopping slipway local: the functions, the ASL engine, every VM")
	return nil
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
			return fmt.Errorf("pool %s: no %d idle VMs within a minute", poolName, n)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
