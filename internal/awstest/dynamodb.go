// Package awstest gives tests and benchmarks clients of the local stand-ins
// for AWS services: DynamoDB Local (a fresh table each) and local-kms.
// `make test` starts them and sets SLIPWAY_DYNAMODB_ENDPOINT and
// SLIPWAY_KMS_ENDPOINT (see .ci/with-services). Without them a test fails in
// CI and is skipped elsewhere.
package awstest

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/slipway-ci/slipway/internal/ddb"
	"github.com/slipway-ci/slipway/internal/localaws"
)

// Client returns a client of DynamoDB Local.
func Client(t testing.TB) *dynamodb.Client {
	t.Helper()
	return localaws.DynamoDB(DynamoDBEndpoint(t))
}

// DynamoDBEndpoint is DynamoDB Local's URL, for what makes its own clients
// (a slipway local runtime).
func DynamoDBEndpoint(t testing.TB) string {
	t.Helper()
	return endpoint(t, localaws.DynamoDBEndpointEnv, "DynamoDB Local")
}

// endpoint reads a stand-in's URL from env, or ends the test.
func endpoint(t testing.TB, env, name string) string {
	t.Helper()
	url := os.Getenv(env)
	if url == "" {
		msg := "no " + name + ": run `make test`, or run the test under `.ci/with-services` (it sets " + env + ")"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return url
}

var tables atomic.Int64

// TableName returns a table name no other test of this process uses.
func TableName(t testing.TB) string {
	return fmt.Sprintf("t%d-%d-%d", os.Getpid(), time.Now().UnixNano()%1e9, tables.Add(1))
}

// Table is a table of the deployment's schema (ddb.TableInput) for this
// test alone, dropped when it ends, and the client to reach it.
func Table(t testing.TB) (*dynamodb.Client, string) {
	t.Helper()
	db := Client(t)
	table := TableName(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := ddb.CreateTable(ctx, db, table); err != nil {
		t.Fatal(err)
	}
	DropAtCleanup(t, db, table)
	return db, table
}

// DropAtCleanup deletes the table when the test ends.
func DropAtCleanup(t testing.TB, db *dynamodb.Client, table string) {
	t.Cleanup(func() {
		_, _ = db.DeleteTable(context.Background(), &dynamodb.DeleteTableInput{TableName: aws.String(table)})
	})
}
