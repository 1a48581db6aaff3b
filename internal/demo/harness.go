package demo

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/slipway-ci/slipway/internal/delegate"
	"github.com/slipway-ci/slipway/internal/harnessrunner"
)

// harnessRunner plays the Harness delegate against `slipway harness-runner`:
// setup, two steps and destroy, as the delegate's VM runner client sends them.
func harnessRunner(ctx context.Context, out io.Writer, api *delegate.Client, say func(string, ...any)) error {
	say("slipway harness-runner: the Harness delegate's VM runner API; setup, two steps, destroy")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: (&harnessrunner.Runner{API: api}).Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	base := "http://" + ln.Addr().String()

	calls := []struct{ route, body string }{
		{"/setup", `{"id": "demo-harness", "pool_id": "demo", "setup_request": {"envs": {"CI": "true"},
			"secrets": ["hx-5ecret-demo"], "network": {"id": "drone"},
			"volumes": [{"host": {"id": "harness", "name": "harness", "path": "/harness"}}]}}`},
		{"/step", `{"stage_runtime_id": "demo-harness", "start_step_request": {"id": "build", "kind": "Run",
			"environment": {"TOKEN": "hx-5ecret-demo"}, "secrets": ["hx-5ecret-demo"], "working_dir": "/harness",
			"run": {"entrypoint": ["bash", "-c"], "commands": ["echo \"token $TOKEN\"; VERSION=2.0.1"]},
			"output_vars": ["VERSION"], "timeout": 60}}`},
		{"/step", `{"stage_runtime_id": "demo-harness", "start_step_request": {"id": "test", "kind": "Run",
			"run": {"entrypoint": ["sh", "-c"], "commands": ["exit 4"]}}}`},
		{"/step", `{"stage_runtime_id": "demo-harness", "start_step_request": {"id": "ti", "kind": "RunTestsV2",
			"run": {"entrypoint": ["sh", "-c"], "commands": ["split-tests"]}}}`},
		{"/destroy", `{"id": "demo-harness", "pool_id": "demo"}`},
	}
	for _, c := range calls {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+c.route, strings.NewReader(c.body))
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		answer, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Fprintf(out, "POST %-8s → %d %s\n", c.route, resp.StatusCode, bytes.TrimSpace(answer))
	}
	// Without a log service in the setup, the step's log is Slipway's alone.
	chunk, err := api.Logs(ctx, "demo-harness", "build", 0, 0)
	if err != nil {
		return err
	}
	for _, line := range strings.SplitAfter(string(chunk.Data), "\n") {
		if line != "" {
			fmt.Fprintf(out, "[harness build] %s", line)
		}
	}
	return nil
}
