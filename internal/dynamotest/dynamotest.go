// Package dynamotest gives tests and benchmarks a DynamoDB Local client and
// a fresh table each. `make test` starts DynamoDB Local and sets
// SLIPWAY_DYNAMODB_ENDPOINT (see .ci/with-services).
package dynamotest

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
)

// EndpointEnv names the variable that holds DynamoDB Local's URL.
const EndpointEnv = "SLIPWAY_DYNAMODB_ENDPOINT"

// NewClient returns a client of the DynamoDB at endpoint with static
// credentials, so nothing ever looks for AWS ones.
func NewClient(endpoint string) *dynamodb.Client {
	cfg := aws.Config{
		Region:      "us-east-1",
		Credentials: credentials.NewStaticCredentialsProvider("local", "local", ""),
	}
	return dynamodb.NewFromConfig(cfg, func(o *dynamodb.Options) {
		o.BaseEndpoint = aws.String(endpoint)
		// DynamoDB Local's error responses carry a wrong CRC32.
		o.DisableValidateResponseChecksum = true
	})
}

// Client returns a client of DynamoDB Local. Without one the test fails in
// CI and is skipped elsewhere.
func Client(t testing.TB) *dynamodb.Client {
	t.Helper()
	endpoint := os.Getenv(EndpointEnv)
	if endpoint == "" {
		msg := "no DynamoDB Local: run `make test`, or start one with `.ci/with-services go test ...` (it sets " + EndpointEnv + ")"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return NewClient(endpoint)
}

var tables atomic.Int64

// TableName returns a table name no other test of this process uses.
func TableName(t testing.TB) string {
	return fmt.Sprintf("t%d-%d-%d", os.Getpid(), time.Now().UnixNano()%1e9, tables.Add(1))
}

// DropAtCleanup deletes the table when the test ends.
func DropAtCleanup(t testing.TB, db *dynamodb.Client, table string) {
	t.Cleanup(func() {
		_, _ = db.DeleteTable(context.Background(), &dynamodb.DeleteTableInput{TableName: aws.String(table)})
	})
}
