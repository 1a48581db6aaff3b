// Package localtest starts a slipway local deployment for the tests of the
// packages that stand in front of the delegate API.
package localtest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/slipway-ci/slipway/agent/agenttest"
	"github.com/slipway-ci/slipway/internal/awstest"
	"github.com/slipway-ci/slipway/internal/delegate"
	"github.com/slipway-ci/slipway/internal/local"
	"github.com/slipway-ci/slipway/internal/pool"
)

// Deployment starts slipway local with the given pools on DynamoDB Local and
// local-kms (without them the test fails in CI and is skipped elsewhere),
// closed when the test ends, and a client of its delegate API.
func Deployment(t testing.TB, pools ...pool.Pool) (*local.Runtime, *delegate.Client) {
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

// ScanTable returns every attribute value of every item of the runtime's
// table, strings, numbers and binaries alike, as bytes to search.
func ScanTable(t testing.TB, rt *local.Runtime) []byte {
	t.Helper()
	var out []byte
	var add func(types.AttributeValue)
	add = func(v types.AttributeValue) {
		switch v := v.(type) {
		case *types.AttributeValueMemberS:
			out = append(out, v.Value...)
		case *types.AttributeValueMemberN:
			out = append(out, v.Value...)
		case *types.AttributeValueMemberB:
			out = append(out, v.Value...)
		case *types.AttributeValueMemberSS:
			out = append(out, strings.Join(v.Value, "\n")...)
		case *types.AttributeValueMemberL:
			for _, e := range v.Value {
				add(e)
			}
		case *types.AttributeValueMemberM:
			for _, e := range v.Value {
				add(e)
			}
		}
		out = append(out, '\n')
	}
	p := dynamodb.NewScanPaginator(rt.DynamoDB, &dynamodb.ScanInput{TableName: aws.String(rt.Deployment.Table)})
	items := 0
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, item := range page.Items {
			items++
			for _, v := range item {
				add(v)
			}
		}
	}
	if items == 0 {
		t.Fatal("the table is empty")
	}
	return out
}

// Encodings are the forms a secret would take in the places searched.
func Encodings(secret string) []string {
	quoted, _ := json.Marshal(secret)
	return []string{
		secret, string(quoted[1 : len(quoted)-1]), url.QueryEscape(secret),
		base64.StdEncoding.EncodeToString([]byte(secret)), base64.RawStdEncoding.EncodeToString([]byte(secret)),
		base64.URLEncoding.EncodeToString([]byte(secret)),
	}
}
