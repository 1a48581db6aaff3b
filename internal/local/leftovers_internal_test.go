package local

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/slipway-ci/slipway/internal/awstest"
	"github.com/slipway-ci/slipway/internal/ddb"
	"github.com/slipway-ci/slipway/internal/localaws"
)

// deadPID is the pid of a process that has ended.
func deadPID(t *testing.T) int {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

// What a killed run left (its folder, its table in a shared DynamoDB) is
// removed by the next; a live run's, and what is not a run's, stay.
func TestLeftoversOfKilledRuns(t *testing.T) {
	dead := deadPID(t)
	tmp := t.TempDir()
	for _, name := range []string{leftoverName(dead) + "a", leftoverName(os.Getpid()) + "b", "slipway-local-x-c", "other"} {
		if err := os.MkdirAll(filepath.Join(tmp, name, "work"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if got := removeDeadDirs(tmp); !slices.Equal(got, []string{leftoverName(dead) + "a"}) {
		t.Errorf("removed %v", got)
	}
	entries, _ := os.ReadDir(tmp)
	if len(entries) != 3 {
		t.Errorf("left %d folders, want the 3 that are not a dead run's", len(entries))
	}

	ctx := context.Background()
	db := localaws.DynamoDB(awstest.DynamoDBEndpoint(t))
	deadTable := leftoverName(dead) + strconv.Itoa(os.Getpid())
	liveTable := leftoverName(os.Getpid()) + "leftovers"
	for _, name := range []string{deadTable, liveTable} {
		if err := ddb.CreateTable(ctx, db, name); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		_, _ = db.DeleteTable(ctx, &dynamodb.DeleteTableInput{TableName: aws.String(liveTable)})
		_, _ = db.DeleteTable(ctx, &dynamodb.DeleteTableInput{TableName: aws.String(deadTable)})
	})
	dropped, err := dropDeadTables(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(dropped, deadTable) || slices.Contains(dropped, liveTable) {
		t.Errorf("dropped %v; want %s and not %s", dropped, deadTable, liveTable)
	}
	if _, err := db.DescribeTable(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(liveTable)}); err != nil {
		t.Errorf("the live run's table: %v", err)
	}
}
