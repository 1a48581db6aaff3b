package record

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/slipway-ci/slipway/internal/ddb"
)

// The stage index: an entry per stage under pk = STAGES#<UTC hour of its
// creation>, sk = <creation millis>#<id>, written with the stage, so the
// stages of the last hours list newest first with one Query an hour. An
// hour's partition takes every create of that hour: about 1,000 writes a
// second per partition is far above the 300 executions a second Step
// Functions starts.
const (
	indexKeyPrefix = "STAGES#"
	indexHour      = "2006-01-02T15"
)

func indexItem(id, pool, owner string, created time.Time, expires types.AttributeValue) map[string]types.AttributeValue {
	item := map[string]types.AttributeValue{
		ddb.AttrPK:       ddb.Str(indexKeyPrefix + created.UTC().Format(indexHour)),
		ddb.AttrSK:       ddb.Str(fmt.Sprintf("%013d#%s", created.UnixMilli(), id)),
		attrStageID:      ddb.Str(id),
		attrPool:         ddb.Str(pool),
		attrCreatedAt:    ddb.Millis(created),
		ddb.TTLAttribute: expires,
	}
	if owner != "" {
		item[attrOwner] = ddb.Str(owner)
	}
	return item
}

// StageRef is a stage's entry in the index.
type StageRef struct {
	ID, Pool, Owner string
	CreatedAt       time.Time
}

// StageFilter picks stages from the index: of a pool, of an owner (each
// only when not empty).
type StageFilter struct {
	Pool, Owner string
}

// ListStages lists the stages created since, newest first, at most limit,
// that f picks.
func (s *Store) ListStages(ctx context.Context, since time.Time, f StageFilter, limit int) ([]StageRef, error) {
	var refs []StageRef
	now := s.now().UTC()
	for hour := now.Truncate(time.Hour); !hour.Before(since.UTC().Truncate(time.Hour)) && len(refs) < limit; hour = hour.Add(-time.Hour) {
		in := &dynamodb.QueryInput{
			TableName:              aws.String(s.Table),
			KeyConditionExpression: aws.String("pk = :pk AND sk >= :since"),
			ExpressionAttributeValues: map[string]types.AttributeValue{
				":pk":    ddb.Str(indexKeyPrefix + hour.Format(indexHour)),
				":since": ddb.Str(fmt.Sprintf("%013d", since.UnixMilli())),
			},
			ScanIndexForward: aws.Bool(false),
		}
		var filters []string
		names := map[string]string{}
		if f.Pool != "" {
			filters, names["#pool"], in.ExpressionAttributeValues[":pool"] = append(filters, "#pool = :pool"), attrPool, ddb.Str(f.Pool)
		}
		if f.Owner != "" {
			filters, names["#owner"], in.ExpressionAttributeValues[":owner"] = append(filters, "#owner = :owner"), attrOwner, ddb.Str(f.Owner)
		}
		if len(filters) > 0 {
			in.FilterExpression = aws.String(strings.Join(filters, " AND "))
			in.ExpressionAttributeNames = names
		}
		for {
			out, err := s.DB.Query(ctx, in)
			if err != nil {
				return nil, fmt.Errorf("list stages: %w", err)
			}
			for _, item := range out.Items {
				created, err := ddb.GetTime(item, attrCreatedAt)
				if err != nil {
					return nil, err
				}
				refs = append(refs, StageRef{ID: ddb.GetString(item, attrStageID), Pool: ddb.GetString(item, attrPool), Owner: ddb.GetString(item, attrOwner), CreatedAt: created})
				if len(refs) == limit {
					return refs, nil
				}
			}
			if len(out.LastEvaluatedKey) == 0 {
				break
			}
			in.ExclusiveStartKey = out.LastEvaluatedKey
		}
	}
	return refs, nil
}
