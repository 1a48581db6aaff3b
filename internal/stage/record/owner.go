package record

import (
	"context"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/slipway-ci/slipway/internal/ddb"
)

// An owner's count of active stages: pk = OWNER#<principal>, sk = ACTIVE.
// A stage created with a limit adds one in its create's transaction, on the
// condition that the count is under the limit, and its release takes one
// off in the release's transaction, which happens exactly once: so no owner
// ever has more active stages than its limit, however many creates race.
const (
	ownerKeyPrefix = "OWNER#"
	ownerActiveSK  = "ACTIVE"
	attrActive     = "active"
	// attrCounted marks a stage whose create counted it for its owner.
	attrCounted = "counted"
)

// ErrOwnerLimit means the owner has as many active stages as its limit.
var ErrOwnerLimit = errors.New("the owner has its most active stages")

// OwnerLimitError says which owner is at which limit.
type OwnerLimitError struct {
	Owner        string
	Active, Most int
}

func (e *OwnerLimitError) Error() string {
	return fmt.Sprintf("%s has %d active stages, its most (%d)", e.Owner, e.Active, e.Most)
}

func (e *OwnerLimitError) Unwrap() error { return ErrOwnerLimit }

func ownerKey(owner string) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{ddb.AttrPK: ddb.Str(ownerKeyPrefix + owner), ddb.AttrSK: ddb.Str(ownerActiveSK)}
}

// countStage is the create's update of the owner's count: one more, if
// under most.
func (s *Store) countStage(owner string, most int) *types.Update {
	return &types.Update{
		TableName: aws.String(s.Table), Key: ownerKey(owner),
		UpdateExpression:          aws.String("ADD #a :one"),
		ConditionExpression:       aws.String("attribute_not_exists(#a) OR #a < :most"),
		ExpressionAttributeNames:  map[string]string{"#a": attrActive},
		ExpressionAttributeValues: map[string]types.AttributeValue{":one": ddb.Num(1), ":most": ddb.Num(int64(most))},
	}
}

// uncountStage is the release's update of the owner's count: one fewer,
// unconditionally (ADD makes a missing count -1 rather than fail a
// release).
func (s *Store) uncountStage(owner string) *types.Update {
	return &types.Update{
		TableName: aws.String(s.Table), Key: ownerKey(owner),
		UpdateExpression:          aws.String("ADD #a :less"),
		ExpressionAttributeNames:  map[string]string{"#a": attrActive},
		ExpressionAttributeValues: map[string]types.AttributeValue{":less": ddb.Num(-1)},
	}
}

// ActiveStages is how many stages of owner are active (created with a
// limit and not released).
func (s *Store) ActiveStages(ctx context.Context, owner string) (int, error) {
	out, err := s.DB.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(s.Table), Key: ownerKey(owner), ConsistentRead: aws.Bool(true)})
	if err != nil {
		return 0, fmt.Errorf("active stages of %s: %w", owner, err)
	}
	n, err := ddb.GetInt(out.Item, attrActive)
	return int(n), err
}
