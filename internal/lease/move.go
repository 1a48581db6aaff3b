package lease

import (
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// move is a conditional change of a VM item's state: it sets the state, the
// time of the change and the next version, on the condition that the item is
// in state from, plus what the particular move adds.
type move struct {
	from, to State
	// set are extra "#name = :value" clauses; remove extra "#name"s.
	set, remove []string
	// cond is ANDed to the state condition.
	cond   string
	names  map[string]string
	values map[string]types.AttributeValue
}

// update is the move as an Update of a transaction.
func (s *Store) moveUpdate(pool, launchID string, m move, now time.Time) *types.Update {
	names := map[string]string{"#st": attrState, "#sa": attrStateAt, "#v": attrVersion}
	for k, v := range m.names {
		names[k] = v
	}
	values := map[string]types.AttributeValue{
		":from": str(string(m.from)), ":to": str(string(m.to)), ":now": millis(now), ":one": num(1),
	}
	for k, v := range m.values {
		values[k] = v
	}
	expr := "SET " + strings.Join(append([]string{"#st = :to", "#sa = :now", "#v = #v + :one"}, m.set...), ", ")
	if len(m.remove) > 0 {
		expr += " REMOVE " + strings.Join(m.remove, ", ")
	}
	cond := "#st = :from"
	if m.cond != "" {
		cond += " AND " + m.cond
	}
	return &types.Update{
		TableName:                 aws.String(s.Table),
		Key:                       vmKey(pool, launchID),
		UpdateExpression:          aws.String(expr),
		ConditionExpression:       aws.String(cond),
		ExpressionAttributeNames:  names,
		ExpressionAttributeValues: values,
	}
}

// updateItem is the same change as a single UpdateItem returning the new item.
func updateItem(u *types.Update) *dynamodb.UpdateItemInput {
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

// leaseMove gives an idle VM to a stage until deadline.
func leaseMove(stageID string, deadline time.Time) move {
	return move{
		from: Idle, to: Leased,
		set:    []string{"#stage = :stage", "#dl = :dl"},
		remove: []string{"#idle"},
		names:  map[string]string{"#stage": attrStage, "#dl": attrLeaseDeadline, "#idle": attrIdlePK},
		values: map[string]types.AttributeValue{":stage": str(stageID), ":dl": millis(deadline)},
	}
}

// releaseMove ends the lease the stage holds.
func releaseMove(stageID string) move {
	return move{
		from: Leased, to: Releasing,
		cond:   "#stage = :stage",
		names:  map[string]string{"#stage": attrStage},
		values: map[string]types.AttributeValue{":stage": str(stageID)},
	}
}
