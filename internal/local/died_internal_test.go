package local

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/internal/awstest"
	"github.com/slipway-ci/slipway/internal/pool"
)

// A part the runtime started that dies on its own is told (which, and
// how), so `slipway local` can say so and stop whole, not stay up
// answering with half a deployment; parts Close stops are not.
func TestAPartThatDiesIsTold(t *testing.T) {
	root, err := RepoRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	o := Options{
		DynamoDBEndpoint: awstest.DynamoDBEndpoint(t), KMSEndpoint: awstest.KMSEndpoint(t),
		Listen: "127.0.0.1:0", AgentPath: "/bin/true", Logs: io.Discard, Metrics: io.Discard,
		Pools: []pool.Pool{LocalPool("p", 0, 1)},
	}
	o.FromRepo(root)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rt, err := Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	if rt.Err() != nil {
		t.Fatalf("died before anything: %v", rt.Err())
	}
	if err := rt.shim.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-rt.Died():
	case <-time.After(10 * time.Second):
		t.Fatal("the engine's death went unnoticed")
	}
	if err := rt.Err(); err == nil || !strings.Contains(err.Error(), "the Step Functions engine (pid") || !strings.Contains(err.Error(), "killed") {
		t.Errorf("Err: %v", err)
	}
	// What Close stops has not died: Close returns once every part's exit
	// was seen.
	calm, err := Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	calm.Close()
	if err := calm.Err(); err != nil {
		t.Errorf("after Close: %v", err)
	}
}
