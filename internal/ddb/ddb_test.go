package ddb_test

import (
	"context"
	"errors"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/slipway-ci/slipway/internal/ddb"
)

// table answers every write with the cancellation reasons it is given, one
// transaction after another, and counts what reached it.
type table struct {
	ddb.DB
	answers [][]string // cancellation codes, per call; nil: success
	writes  int
}

func (f *table) UpdateItem(context.Context, *dynamodb.UpdateItemInput, ...func(*dynamodb.Options)) (*dynamodb.UpdateItemOutput, error) {
	f.writes++
	return &dynamodb.UpdateItemOutput{}, nil
}

func (f *table) GetItem(context.Context, *dynamodb.GetItemInput, ...func(*dynamodb.Options)) (*dynamodb.GetItemOutput, error) {
	return &dynamodb.GetItemOutput{}, nil
}

func (f *table) TransactWriteItems(context.Context, *dynamodb.TransactWriteItemsInput, ...func(*dynamodb.Options)) (*dynamodb.TransactWriteItemsOutput, error) {
	f.writes++
	if len(f.answers) == 0 {
		return &dynamodb.TransactWriteItemsOutput{}, nil
	}
	codes := f.answers[0]
	f.answers = f.answers[1:]
	if codes == nil {
		return &dynamodb.TransactWriteItemsOutput{}, nil
	}
	e := &types.TransactionCanceledException{Message: aws.String("canceled")}
	for _, c := range codes {
		e.CancellationReasons = append(e.CancellationReasons, types.CancellationReason{Code: aws.String(c)})
	}
	return nil, e
}

func update(pk string) types.TransactWriteItem {
	return types.TransactWriteItem{Update: &types.Update{Key: ddb.Key(pk, "x")}}
}

func TestTransactTellsWhichConditionFailed(t *testing.T) {
	first, second := errors.New("first"), errors.New("second")
	in := &dynamodb.TransactWriteItemsInput{TransactItems: []types.TransactWriteItem{update("A"), update("B")}}
	for _, c := range []struct {
		name    string
		answers [][]string
		want    error
		writes  int
	}{
		{"the second item's condition", [][]string{{"None", "ConditionalCheckFailed"}}, second, 1},
		{"a conflict, then success", [][]string{{"TransactionConflict", "None"}, nil}, nil, 2},
		{"conflicts past the retries", [][]string{{"TransactionConflict"}, {"TransactionConflict"}, {"TransactionConflict"},
			{"TransactionConflict"}, {"TransactionConflict"}, {"TransactionConflict"}}, ddb.ErrConflict, 6},
	} {
		t.Run(c.name, func(t *testing.T) {
			db := &table{answers: c.answers}
			err := ddb.Transact(t.Context(), db, in, first, second)
			if !errors.Is(err, c.want) || (c.want == nil && err != nil) || db.writes != c.writes {
				t.Fatalf("err %v after %d writes, want %v after %d", err, db.writes, c.want, c.writes)
			}
		})
	}
	// A failed condition with no reason given is the error itself.
	db := &table{answers: [][]string{{"ConditionalCheckFailed"}}}
	var canceled *types.TransactionCanceledException
	if err := ddb.Transact(t.Context(), db, in); !errors.As(err, &canceled) {
		t.Fatalf("no reason: %v", err)
	}
}

func TestWriteGuardRefusesOtherPartitions(t *testing.T) {
	db := &table{}
	var heard []*ddb.PartitionError
	g := &ddb.WriteGuard{DB: db, Function: "rungroup", Partitions: []string{ddb.StagePartitions, ddb.DeploymentPartition},
		Refused: func(e *ddb.PartitionError) { heard = append(heard, e) }}
	ctx := t.Context()
	// A transaction with one item outside is refused whole: nothing reaches the table.
	_, err := g.TransactWriteItems(ctx, &dynamodb.TransactWriteItemsInput{TransactItems: []types.TransactWriteItem{
		update(ddb.StagePartitions + "s1"), update(ddb.PoolPartitions + "p"),
	}})
	var refused *ddb.PartitionError
	if !errors.As(err, &refused) || refused.Key != "POOL#p" || refused.Function != "rungroup" || db.writes != 0 || len(heard) != 1 {
		t.Fatalf("a transaction with a pool's item: %v, %d writes, %d heard", err, db.writes, len(heard))
	}
	// A prefix ending in # covers its partitions; an exact one only itself.
	for pk, ok := range map[string]bool{"STAGE#s1": true, "DEPLOYMENT": true, "DEPLOYMENTS": false, "STAGES#2026": false} {
		_, err := g.UpdateItem(ctx, &dynamodb.UpdateItemInput{Key: ddb.Key(pk, "x")})
		if (err == nil) != ok {
			t.Errorf("UpdateItem of %s: %v", pk, err)
		}
	}
	// Reads are not guarded.
	if _, err := g.GetItem(ctx, &dynamodb.GetItemInput{Key: ddb.Key("POOL#p", "x")}); err != nil {
		t.Fatalf("a read: %v", err)
	}
}

func TestChangeWith(t *testing.T) {
	base := ddb.Change{Set: []string{"#v = #v + :one"}, Cond: "attribute_exists(pk)",
		Names: map[string]string{"#v": "version"}, Values: map[string]types.AttributeValue{":one": ddb.Num(1)}}
	u := base.With(ddb.Change{Set: []string{"#r = :r"}, Remove: []string{"#s"}, Cond: "#r <> :r",
		Names: map[string]string{"#r": "result", "#s": "sealed"}, Values: map[string]types.AttributeValue{":r": ddb.Str("passed")}}).
		Update("t", ddb.Key("STAGE#s1", "META"))
	if got := aws.ToString(u.UpdateExpression); got != "SET #v = #v + :one, #r = :r REMOVE #s" {
		t.Errorf("update expression %q", got)
	}
	if got := aws.ToString(u.ConditionExpression); got != "attribute_exists(pk) AND #r <> :r" {
		t.Errorf("condition %q", got)
	}
	if len(u.ExpressionAttributeNames) != 3 || len(u.ExpressionAttributeValues) != 2 || aws.ToString(u.TableName) != "t" {
		t.Errorf("names %v, values %v", u.ExpressionAttributeNames, u.ExpressionAttributeValues)
	}
	// The base is left as it was: every update starts from it.
	if len(base.Set) != 1 || len(base.Names) != 1 || len(base.Values) != 1 {
		t.Errorf("With changed its receiver: %+v", base)
	}
	if u := (ddb.Change{Set: []string{"#a = :a"}}).Update("t", ddb.Key("p", "s")); u.ConditionExpression != nil {
		t.Errorf("no condition given, one written: %q", aws.ToString(u.ConditionExpression))
	}
}
