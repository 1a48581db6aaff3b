package ddb

import (
	"context"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// The table's partitions, by the prefix of their partition key: what IAM's
// dynamodb:LeadingKeys condition can tell apart, so each function's role
// may write only the partitions its handler writes.
const (
	PoolPartitions      = "POOL#"      // a pool's VMs and its capacity
	StagePartitions     = "STAGE#"     // a stage's records
	IndexPartitions     = "STAGES#"    // the stage index, an hour each
	OwnerPartitions     = "OWNER#"     // an owner's count of active stages
	DeploymentPartition = "DEPLOYMENT" // the CA certificate
)

// WriteGuard is a DB that refuses a write to a partition that is not one of
// Partitions (prefixes, as above), as IAM's dynamodb:LeadingKeys condition
// refuses it on AWS, item by item inside a transaction. `slipway local`
// gives each function the guard of its role's grants, so every test that
// runs stages there shows the deployment's conditions let each function do
// what it does.
type WriteGuard struct {
	DB
	Function   string
	Partitions []string
	// Refused, if set, hears of each refusal: a handler may take a refused
	// write as a failure it gets over (a best-effort lease, a retry), and
	// the refusal must still be seen.
	Refused func(*PartitionError)
}

// PartitionError is a write the guard refused.
type PartitionError struct {
	Function, Action, Key string
}

func (e *PartitionError) Error() string {
	return fmt.Sprintf("AccessDenied: the %s function may not %s an item of partition %q (dynamodb:LeadingKeys)", e.Function, e.Action, e.Key)
}

func (g *WriteGuard) check(action string, key map[string]types.AttributeValue) error {
	pk := GetString(key, AttrPK)
	for _, p := range g.Partitions {
		if pk == p || (strings.HasSuffix(p, "#") && strings.HasPrefix(pk, p)) {
			return nil
		}
	}
	err := &PartitionError{Function: g.Function, Action: action, Key: pk}
	if g.Refused != nil {
		g.Refused(err)
	}
	return err
}

func (g *WriteGuard) UpdateItem(ctx context.Context, in *dynamodb.UpdateItemInput, opts ...func(*dynamodb.Options)) (*dynamodb.UpdateItemOutput, error) {
	if err := g.check("UpdateItem", in.Key); err != nil {
		return nil, err
	}
	return g.DB.UpdateItem(ctx, in, opts...)
}

func (g *WriteGuard) TransactWriteItems(ctx context.Context, in *dynamodb.TransactWriteItemsInput, opts ...func(*dynamodb.Options)) (*dynamodb.TransactWriteItemsOutput, error) {
	for _, w := range in.TransactItems {
		var err error
		switch {
		case w.Put != nil:
			err = g.check("PutItem", w.Put.Item)
		case w.Update != nil:
			err = g.check("UpdateItem", w.Update.Key)
		case w.Delete != nil:
			err = g.check("DeleteItem", w.Delete.Key)
		}
		if err != nil {
			return nil, err
		}
	}
	return g.DB.TransactWriteItems(ctx, in, opts...)
}
