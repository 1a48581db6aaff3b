// Package ddb is the one DynamoDB table every record of a deployment lives
// in: its schema and partitions, the attribute codecs the records share,
// transactions that say which item's condition failed, and the write guard
// that stands in for IAM's dynamodb:LeadingKeys locally. The records
// themselves are their domains': VM items and pool capacity in
// internal/lease, stage records in internal/stage/record, the CA
// certificate in internal/deploy.
package ddb

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/smithy-go"

	"github.com/slipway-ci/slipway/internal/clock"
)

// DB is the part of the DynamoDB API the records use; *dynamodb.Client
// satisfies it.
type DB interface {
	GetItem(ctx context.Context, params *dynamodb.GetItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.GetItemOutput, error)
	UpdateItem(ctx context.Context, params *dynamodb.UpdateItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.UpdateItemOutput, error)
	Query(ctx context.Context, params *dynamodb.QueryInput, optFns ...func(*dynamodb.Options)) (*dynamodb.QueryOutput, error)
	TransactWriteItems(ctx context.Context, params *dynamodb.TransactWriteItemsInput, optFns ...func(*dynamodb.Options)) (*dynamodb.TransactWriteItemsOutput, error)
}

// The key of every item, and the attributes of the idle index, which the
// table's schema declares.
const (
	AttrPK = "pk"
	AttrSK = "sk"
	// AttrIdlePK is present only while a VM is idle: the idle index is sparse.
	AttrIdlePK   = "idle_pk"
	AttrLaunchID = "launch_id"
	// IdleIndex lists idle VMs per pool.
	IdleIndex = "idle"
	// TTLAttribute is the table's time-to-live attribute, epoch seconds.
	TTLAttribute = "expires_at"
)

// Key is an item's key.
func Key(pk, sk string) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{AttrPK: Str(pk), AttrSK: Str(sk)}
}

// ErrConflict means concurrent transactions kept colliding; retry later.
var ErrConflict = errors.New("transaction conflict")

// transactRetries bounds the retries of a transaction that conflicted with
// another one on the same items.
const transactRetries = 5

// Transact runs a transaction, retrying conflicts, and translates a failed
// condition of item i into reasons[i] (when there is one, not nil).
func Transact(ctx context.Context, db DB, in *dynamodb.TransactWriteItemsInput, reasons ...error) error {
	for attempt := 0; ; attempt++ {
		_, err := db.TransactWriteItems(ctx, in)
		if err == nil {
			return nil
		}
		var canceled *types.TransactionCanceledException
		if !errors.As(err, &canceled) {
			return err
		}
		conflict := false
		for i, r := range canceled.CancellationReasons {
			switch aws.ToString(r.Code) {
			case "ConditionalCheckFailed":
				if i < len(reasons) && reasons[i] != nil {
					return reasons[i]
				}
				return err
			case "TransactionConflict":
				conflict = true
			}
		}
		if !conflict {
			return err
		}
		if attempt >= transactRetries {
			return ErrConflict
		}
		if err := clock.Sleep(ctx, time.Duration(rand.IntN(10<<attempt)+1)*time.Millisecond); err != nil {
			return err
		}
	}
}

// UpdateItem is the transaction item u as a single UpdateItem that returns
// the item as it left it.
func UpdateItem(u *types.Update) *dynamodb.UpdateItemInput {
	return &dynamodb.UpdateItemInput{
		TableName:                 u.TableName,
		Key:                       u.Key,
		UpdateExpression:          u.UpdateExpression,
		ConditionExpression:       u.ConditionExpression,
		ExpressionAttributeNames:  u.ExpressionAttributeNames,
		ExpressionAttributeValues: u.ExpressionAttributeValues,
		ReturnValues:              types.ReturnValueAllNew,
	}
}

// IsConditionFailed says whether a single write failed its condition.
func IsConditionFailed(err error) bool {
	var apiErr smithy.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode() == "ConditionalCheckFailedException"
}

// Str is a string value.
func Str(v string) types.AttributeValue { return &types.AttributeValueMemberS{Value: v} }

// Num is a number value.
func Num(v int64) types.AttributeValue {
	return &types.AttributeValueMemberN{Value: strconv.FormatInt(v, 10)}
}

// Millis is a time as a number of milliseconds since the epoch.
func Millis(t time.Time) types.AttributeValue { return Num(t.UnixMilli()) }

// GetString reads a string attribute, "" when absent.
func GetString(item map[string]types.AttributeValue, name string) string {
	if v, ok := item[name].(*types.AttributeValueMemberS); ok {
		return v.Value
	}
	return ""
}

// GetBytes reads a binary attribute, nil when absent.
func GetBytes(item map[string]types.AttributeValue, name string) []byte {
	if v, ok := item[name].(*types.AttributeValueMemberB); ok {
		return v.Value
	}
	return nil
}

// SetBytes sets a binary attribute; DynamoDB refuses empty ones, so an empty
// value leaves it out.
func SetBytes(item map[string]types.AttributeValue, name string, v []byte) {
	if len(v) > 0 {
		item[name] = &types.AttributeValueMemberB{Value: v}
	}
}

// GetBool reads a boolean attribute, false when absent.
func GetBool(item map[string]types.AttributeValue, name string) bool {
	v, ok := item[name].(*types.AttributeValueMemberBOOL)
	return ok && v.Value
}

// GetInt reads a number attribute, 0 when absent.
func GetInt(item map[string]types.AttributeValue, name string) (int64, error) {
	v, ok := item[name].(*types.AttributeValueMemberN)
	if !ok {
		return 0, nil
	}
	n, err := strconv.ParseInt(v.Value, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("attribute %s: %w", name, err)
	}
	return n, nil
}

// GetTime reads a time written by Millis, zero when absent.
func GetTime(item map[string]types.AttributeValue, name string) (time.Time, error) {
	ms, err := GetInt(item, name)
	if err != nil || ms == 0 {
		return time.Time{}, err
	}
	return time.UnixMilli(ms).UTC(), nil
}

// Change is a conditional update of one item: SET clauses ("#name =
// :value"), REMOVE clauses ("#name"), a condition, and the names and values
// they use.
type Change struct {
	Set, Remove []string
	Cond        string
	Names       map[string]string
	Values      map[string]types.AttributeValue
}

// With is c and d together: their clauses, names and values, and both
// conditions.
func (c Change) With(d Change) Change {
	out := Change{
		Set:    append(slices.Clone(c.Set), d.Set...),
		Remove: append(slices.Clone(c.Remove), d.Remove...),
		Cond:   c.Cond,
		Names:  maps.Clone(c.Names),
		Values: maps.Clone(c.Values),
	}
	if d.Cond != "" {
		out.Cond = strings.TrimPrefix(out.Cond+" AND "+d.Cond, " AND ")
	}
	if out.Names == nil {
		out.Names = map[string]string{}
	}
	if out.Values == nil {
		out.Values = map[string]types.AttributeValue{}
	}
	maps.Copy(out.Names, d.Names)
	maps.Copy(out.Values, d.Values)
	return out
}

// Update is c as the update of the item at key, for a transaction (or, by
// UpdateItem, alone).
func (c Change) Update(table string, key map[string]types.AttributeValue) *types.Update {
	expr := "SET " + strings.Join(c.Set, ", ")
	if len(c.Remove) > 0 {
		expr += " REMOVE " + strings.Join(c.Remove, ", ")
	}
	u := &types.Update{
		TableName: aws.String(table), Key: key, UpdateExpression: aws.String(expr),
		ExpressionAttributeNames: c.Names, ExpressionAttributeValues: c.Values,
	}
	if c.Cond != "" {
		u.ConditionExpression = aws.String(c.Cond)
	}
	return u
}
