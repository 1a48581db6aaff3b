package local

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
)

// A runtime's temporary folder and table are named after its process
// ("slipway-local-<pid>-..."): a run killed before its Close (SIGKILL, an
// OOM kill) cannot remove them, so the next run removes those whose
// process is gone. Its agents and services have ended already: the kernel
// signals them when the runtime dies.
const leftoverPrefix = "slipway-local-"

func leftoverName(pid int) string { return leftoverPrefix + strconv.Itoa(pid) + "-" }

// deadRun says whether name is a runtime's whose process has ended.
func deadRun(name string) bool {
	rest, ok := strings.CutPrefix(name, leftoverPrefix)
	if !ok {
		return false
	}
	pidText, _, ok := strings.Cut(rest, "-")
	pid, err := strconv.Atoi(pidText)
	return ok && err == nil && pid > 0 && !processAlive(pid)
}

// removeDeadDirs removes the temporary folders of dead runs (their agents'
// work folders may hold a stage's files) and returns what it removed.
func removeDeadDirs(tmp string) []string {
	entries, _ := os.ReadDir(tmp)
	var removed []string
	for _, e := range entries {
		if !e.IsDir() || !deadRun(e.Name()) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(tmp, e.Name())); err == nil {
			removed = append(removed, e.Name())
		}
	}
	return removed
}

// dropDeadTables deletes the tables dead runs left in a shared DynamoDB and
// returns their names.
func dropDeadTables(ctx context.Context, db *dynamodb.Client) ([]string, error) {
	var dropped []string
	p := dynamodb.NewListTablesPaginator(db, &dynamodb.ListTablesInput{ExclusiveStartTableName: aws.String(leftoverPrefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return dropped, fmt.Errorf("list the tables of earlier runs: %w", err)
		}
		for _, name := range page.TableNames {
			if !deadRun(name) {
				continue
			}
			if _, err := db.DeleteTable(ctx, &dynamodb.DeleteTableInput{TableName: aws.String(name)}); err != nil {
				return dropped, fmt.Errorf("drop table %s of an earlier run: %w", name, err)
			}
			dropped = append(dropped, name)
		}
	}
	return dropped, nil
}
