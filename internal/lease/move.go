package lease

import (
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/slipway-ci/slipway/internal/ddb"
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
		":from": ddb.Str(string(m.from)), ":to": ddb.Str(string(m.to)), ":now": ddb.Millis(now), ":one": ddb.Num(1),
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

// leaseMove gives an idle VM to a stage until deadline.
func leaseMove(stageID string, deadline time.Time) move {
	return move{
		from: Idle, to: Leased,
		set:    []string{"#stage = :stage", "#dl = :dl"},
		remove: []string{"#idle"},
		names:  map[string]string{"#stage": attrStage, "#dl": attrLeaseDeadline, "#idle": ddb.AttrIdlePK},
		values: map[string]types.AttributeValue{":stage": ddb.Str(stageID), ":dl": ddb.Millis(deadline)},
	}
}

// releaseMove ends the lease the stage holds.
func releaseMove(stageID string) move {
	return move{
		from: Leased, to: Releasing,
		cond:   "#stage = :stage",
		names:  map[string]string{"#stage": attrStage},
		values: map[string]types.AttributeValue{":stage": ddb.Str(stageID)},
	}
}

// LeaseUpdate gives the idle VM to the stage until deadline, as an item of a
// transaction that writes the stage's record too (internal/stage/record).
func (s *Store) LeaseUpdate(pool, launchID, stageID string, deadline, now time.Time) *types.Update {
	return s.moveUpdate(pool, launchID, leaseMove(stageID, deadline), now)
}

// ReleaseUpdate moves the VM the stage holds to releasing, as an item of a
// transaction that writes the stage's record too (internal/stage/record).
func (s *Store) ReleaseUpdate(pool, launchID, stageID string, now time.Time) *types.Update {
	return s.moveUpdate(pool, launchID, releaseMove(stageID), now)
}
