// Package localtest starts a slipway local deployment for the tests of the
// packages that stand in front of the delegate API.
package localtest

import (
	"context"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/agent/agenttest"
	"github.com/slipway-ci/slipway/internal/awstest"
	"github.com/slipway-ci/slipway/internal/delegate"
	"github.com/slipway-ci/slipway/internal/local"
	"github.com/slipway-ci/slipway/internal/pool"
)

// Deployment starts slipway local with the given pools on DynamoDB Local and
// local-kms (without them the test fails in CI and is skipped elsewhere),
// closed when the test ends, and a client of its delegate API.
func Deployment(t *testing.T, pools ...pool.Pool) (*local.Runtime, *delegate.Client) {
	t.Helper()
	ddb, kms := awstest.DynamoDBEndpoint(t), awstest.KMSEndpoint(t)
	root, err := local.RepoRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	o := local.Options{
		Listen: "127.0.0.1:0", AgentPath: agenttest.BuildAgent(t), DynamoDBEndpoint: ddb, KMSEndpoint: kms,
		Pools: pools, Tick: time.Second,
	}
	o.FromRepo(root)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rt, err := local.Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.Close)
	api, err := delegate.New(rt.APIURL, delegate.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return rt, api
}
