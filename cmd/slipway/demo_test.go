package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/agent/agenttest"
	"github.com/slipway-ci/slipway/internal/localaws"
)

// TestDemo runs `slipway demo` against a freshly built agent, as `make demo`
// does, so the README's first command is tested too.
func TestDemo(t *testing.T) {
	bin := agenttest.BuildAgent(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, []string{"demo", "--agent", bin}, &out); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	got := out.String()
	for _, want := range []string{
		"state succeeded, exit code 0",
		"outputs map[VERSION:1.2.3]",
		"state failed, exit code 3",
		"token: ******\n  | ******\n",
		"state timed_out",
		"usage: ",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	if strings.Contains(got, "s3cr3t-demo-token") || strings.Contains(got, "dk-5ecret-demo") || strings.Contains(got, "hx-5ecret-demo") {
		t.Error("the demo printed the secret")
	}
	if os.Getenv("DOCKER_HOST") != "" && (!strings.Contains(got, "in a container:") || !strings.Contains(got, "[container] in a container: ")) {
		t.Error("the demo skipped the container step although Docker is there")
	}
	if os.Getenv(localaws.DynamoDBEndpointEnv) != "" {
		for _, want := range []string{
			"leased vm-", "a second release is refused", "idle=2 leased=0 releasing=0",
			"stage demo-pass: succeeded\n", "[secret] deploying with key ******\n", "tests of tests: 2, 1 failed, 0 skipped",
			"  FAIL com.example.CartTest > appliesDiscount\n", "stage demo-fail: failed (step unit failed (exit code 2))",
			"  publish              skipped", "the log comes from the archive\ndeploying with key ******\n",
			"  demo     2             0       0          0    3            2",
			`POST /step    → 200 {"exited":true,"outputs":{"VERSION":"2.0.1"},"outputV2":[{"key":"VERSION","value":"2.0.1","type":"STRING"}]}`,
			`POST /step    → 200 {"exited":true,"exit_code":4,"error":"exit status 4"}`,
			`POST /step    → 400 {"error_msg":"start_step_request.kind \"RunTestsV2\": want Run or RunTest (RunTestsV2 needs Harness's Test Intelligence service)","code":400}`,
			"POST /setup   → 200 {\"ip_address\":\"127.0.0.1\"", "POST /destroy → 200 \n", "[harness build] token ******\n",
		} {
			if strings.Count(got, want) == 0 {
				t.Errorf("the warm pool part lacks %q", want)
			}
		}
	}
	if t.Failed() {
		t.Log(got)
	}
}
