package record

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/slipway-ci/slipway/internal/clock"

	"github.com/slipway-ci/slipway/internal/ddb"
	"github.com/slipway-ci/slipway/internal/lease"
)

// Group and step items. A group's steps run in parallel; the groups of a
// stage run in index order. The step ids of a stage are kept as a set on
// its META item, so that adding a group with a step id already used fails
// in the same transaction that adds it.
const (
	groupSKPrefix  = "GROUP#"
	stepSKPrefix   = "STEP#"
	attrGroupIndex = "group_index"
	attrGroupState = "group_state"
	attrAddedAt    = "added_at"
	attrStartedAt  = "started_at"
	attrStepID     = "step_id"
	attrStepState  = "step_state"
	attrStepResult = "step_result"
	// MaxStepsPerGroup bounds a group so that its end (the stage, the group
	// and each step's result) is one transaction.
	MaxStepsPerGroup = maxTransactItems - 2
)

// NewGroup is a group to record.
type NewGroup struct {
	// SpecHash identifies the request that added the group; Spec is its
	// steps as the orchestrator encodes them, without secrets; Sealed the
	// steps' secrets, encrypted.
	SpecHash string
	Spec     []byte
	Sealed   []byte
	StepIDs  []string
	Final    bool
}

// Group is a group's record.
type Group struct {
	Index    int
	SpecHash string
	Spec     []byte
	Sealed   []byte
	Final    bool
	// State is the orchestrator's word for how the group ended ("" while it
	// has not).
	State              string
	AddedAt            time.Time
	StartedAt, EndedAt time.Time
}

// StepRecord is a step's result, recorded when its group ends.
type StepRecord struct {
	ID    string
	Group int
	State string
	// Result is the step's result as the orchestrator encodes it.
	Result []byte
}

func groupSK(index int) string { return fmt.Sprintf("%s%05d", groupSKPrefix, index) }

func groupKey(stageID string, index int) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{ddb.AttrPK: ddb.Str(stageKeyPrefix + stageID), ddb.AttrSK: ddb.Str(groupSK(index))}
}

func stepKey(stageID, stepID string) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{ddb.AttrPK: ddb.Str(stageKeyPrefix + stageID), ddb.AttrSK: ddb.Str(stepSKPrefix + stepID)}
}

func groupItem(stageID string, index int, g NewGroup, now time.Time, expires types.AttributeValue) map[string]types.AttributeValue {
	item := groupKey(stageID, index)
	item[attrStageID] = ddb.Str(stageID)
	item[attrGroupIndex] = ddb.Num(int64(index))
	item[attrSpecHash] = ddb.Str(g.SpecHash)
	item[attrAddedAt] = ddb.Millis(now)
	item[ddb.TTLAttribute] = expires
	ddb.SetBytes(item, attrSpec, g.Spec)
	ddb.SetBytes(item, attrSealed, g.Sealed)
	if g.Final {
		item[attrFinal] = &types.AttributeValueMemberBOOL{Value: true}
	}
	return item
}

func decodeGroup(item map[string]types.AttributeValue) (*Group, error) {
	g := &Group{
		SpecHash: ddb.GetString(item, attrSpecHash), Spec: ddb.GetBytes(item, attrSpec), Sealed: ddb.GetBytes(item, attrSealed),
		Final: ddb.GetBool(item, attrFinal), State: ddb.GetString(item, attrGroupState),
	}
	index, err := ddb.GetInt(item, attrGroupIndex)
	g.Index = int(index)
	errs := []error{err}
	for name, dst := range map[string]*time.Time{attrAddedAt: &g.AddedAt, attrStartedAt: &g.StartedAt, attrEndedAt: &g.EndedAt} {
		t, err := ddb.GetTime(item, name)
		errs = append(errs, err)
		*dst = t
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("group record %s: %w", ddb.GetString(item, ddb.AttrSK), err)
	}
	return g, nil
}

// AddGroup appends a group to a stage that is open (its final group not
// given), not ended and not released, and returns it with the stage's
// records as its write left them. read is what the caller read of the
// stage (StageRecords) for the first attempt, nil to have it read; each
// retry reads again. A step id the stage used already is ErrStepExists; a
// closed stage ErrStageClosed; an ended one ErrStageEnded. Adding the same
// group again (same SpecHash and steps, a retried request) returns the
// group added the first time.
func (s *Store) AddGroup(ctx context.Context, stageID string, read *Records, g NewGroup) (*Group, *Records, error) {
	if len(g.StepIDs) == 0 || len(g.StepIDs) > MaxStepsPerGroup {
		return nil, nil, fmt.Errorf("add group to stage %s: %d steps, want 1 to %d", stageID, len(g.StepIDs), MaxStepsPerGroup)
	}
	for attempt := 0; ; attempt++ {
		r := read
		if r == nil || attempt > 0 {
			var err error
			if r, err = s.StageRecords(ctx, stageID); err != nil {
				return nil, nil, err
			}
		}
		st := r.Stage
		if !st.ReleasedAt.IsZero() {
			return nil, nil, fmt.Errorf("add a group to stage %s: %w", stageID, lease.ErrReleased)
		}
		if existing, err := sameGroup(r, g); existing != nil || err != nil {
			return existing, r, err
		}
		switch {
		case st.Result != "":
			return nil, nil, fmt.Errorf("add group to stage %s: %w (%s)", stageID, ErrStageEnded, st.Result)
		case st.Final:
			return nil, nil, fmt.Errorf("add group to stage %s: %w", stageID, ErrStageClosed)
		}
		now := s.now()
		c := ddb.Change{
			Set:    []string{"#g = #g + :one", "#final = :final"},
			Cond:   "#g = :n AND attribute_not_exists(#rel) AND attribute_not_exists(#res) AND (attribute_not_exists(#final) OR #final = :false)",
			Names:  map[string]string{"#g": attrGroups, "#final": attrFinal, "#ids": attrStepIDs, "#rel": attrReleasedAt, "#res": attrResult},
			Values: map[string]types.AttributeValue{":n": ddb.Num(int64(st.Groups)), ":final": &types.AttributeValueMemberBOOL{Value: g.Final}, ":false": &types.AttributeValueMemberBOOL{Value: false}},
		}
		for i, id := range g.StepIDs {
			c.Cond += fmt.Sprintf(" AND NOT contains(#ids, :id%d)", i)
			c.Values[fmt.Sprintf(":id%d", i)] = ddb.Str(id)
		}
		update := s.stageUpdate(stageID, c)
		// ADD keeps the set of the stage's step ids.
		*update.UpdateExpression += " ADD #ids :ids"
		update.ExpressionAttributeValues[":ids"] = &types.AttributeValueMemberSS{Value: g.StepIDs}
		item := groupItem(stageID, st.Groups, g, now, ddb.Num(st.Deadline.Add(recordRetention).Unix()))
		if err := tooLarge(
			checkItemSize(fmt.Sprintf("the record of group %d of stage %s", st.Groups, stageID), item, MaxItemBytes-groupReserve),
			st.checkGrowth(g.StepIDs),
		); err != nil {
			return nil, nil, fmt.Errorf("add group to stage %s: %w", stageID, err)
		}
		err := ddb.Transact(ctx, s.DB, &dynamodb.TransactWriteItemsInput{TransactItems: []types.TransactWriteItem{
			{Update: update},
			{Put: &types.Put{TableName: aws.String(s.Table), Item: item, ConditionExpression: aws.String("attribute_not_exists(pk)")}},
		}}, errStageMoved, errStageMoved)
		if err == nil {
			added, err := decodeGroup(item)
			if err != nil {
				return nil, nil, err
			}
			return added, r.withGroup(added, g.StepIDs), nil
		}
		if !errors.Is(err, errStageMoved) && !errors.Is(err, ddb.ErrConflict) {
			return nil, nil, fmt.Errorf("add group to stage %s: %w", stageID, err)
		}
		// Another group was added meanwhile, or the stage moved on: look
		// again. Each round one of the concurrent adds wins.
		if attempt >= addGroupRounds {
			return nil, nil, fmt.Errorf("add group to stage %s: %w", stageID, ddb.ErrConflict)
		}
		if err := clock.Sleep(ctx, time.Duration(rand.IntN(5<<min(attempt, 4))+1)*time.Millisecond); err != nil {
			return nil, nil, err
		}
	}
}

// withGroup is r as AddGroup's write of g leaves it (r itself unchanged):
// the stage's update applied, the group's record added.
func (r *Records) withGroup(g *Group, stepIDs []string) *Records {
	st := *r.Stage
	st.Groups++
	st.Final = g.Final
	st.Version++
	st.stepIDs = append(slices.Clip(st.stepIDs), stepIDs...)
	st.bytes += addedBytes(r.Stage, stepIDs)
	return &Records{Stage: &st, Groups: append(slices.Clip(r.Groups), *g), Steps: r.Steps}
}

// checkGrowth says whether step ids would take the stage's record (which
// keeps every step id) over its limit.
func (st *Stage) checkGrowth(stepIDs []string) *OversizeRecord {
	grown := st.bytes + addedBytes(st, stepIDs)
	if grown <= MaxItemBytes-stageReserve {
		return nil
	}
	ids := len(attrStepIDs)
	for _, id := range append(slices.Clip(st.stepIDs), stepIDs...) {
		ids += len(id)
	}
	parts := []RecordPart{
		{partName(attrSpec), len(attrSpec) + len(st.Spec)}, {partName(attrSealed), len(attrSealed) + len(st.Sealed)}, {partName(attrStepIDs), ids},
	}
	slices.SortFunc(parts, func(a, b RecordPart) int { return b.Bytes - a.Bytes })
	return &OversizeRecord{Record: "the record of stage " + st.ID, Bytes: grown, Limit: MaxItemBytes - stageReserve, Parts: parts}
}

// addedBytes is what adding stepIDs adds to the stage's record: the ids,
// the set's name if it is new, and a few bytes for the counts that grow.
func addedBytes(st *Stage, stepIDs []string) int {
	n := 8
	if len(st.stepIDs) == 0 {
		n += len(attrStepIDs)
	}
	for _, id := range stepIDs {
		n += len(id)
	}
	return n
}

var errStageMoved = errors.New("the stage changed meanwhile")

// addGroupRounds bounds the rounds of concurrent adds to one stage.
const addGroupRounds = 50

// sameGroup tells a retried add from a clash: if one of g's step ids is
// taken, it returns the group that has it when that group is g, and
// ErrStepExists otherwise.
func sameGroup(r *Records, g NewGroup) (*Group, error) {
	var taken []string
	for _, id := range g.StepIDs {
		if slices.Contains(r.Stage.stepIDs, id) {
			taken = append(taken, id)
		}
	}
	if len(taken) == 0 {
		return nil, nil
	}
	for i := range r.Groups {
		if r.Groups[i].SpecHash == g.SpecHash && len(taken) == len(g.StepIDs) {
			return &r.Groups[i], nil
		}
	}
	return nil, fmt.Errorf("add group to stage %s: %w: %s", r.Stage.ID, ErrStepExists, strings.Join(taken, ", "))
}

// GetGroup reads one group of a stage.
func (s *Store) GetGroup(ctx context.Context, stageID string, index int) (*Group, error) {
	out, err := s.DB.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(s.Table), Key: groupKey(stageID, index), ConsistentRead: aws.Bool(true)})
	if err != nil {
		return nil, fmt.Errorf("get group %d of stage %s: %w", index, stageID, err)
	}
	if out.Item == nil {
		return nil, fmt.Errorf("group %d of stage %s: %w", index, stageID, lease.ErrNotFound)
	}
	return decodeGroup(out.Item)
}

// GroupEnd is how a group ended.
type GroupEnd struct {
	// State is the group's outcome; Steps its steps' results.
	State              string
	StartedAt, EndedAt time.Time
	Steps              []StepRecord
	// Result and Reason, when Result is set, end the stage (unless it has a
	// result already).
	Result, Reason string
}

// FinishGroup records the end of the stage's current group (index) and
// moves the stage on to the next one, in one transaction. If the group is no
// longer current (another invocation finished it, or the stage was
// released) it returns ErrGroupMoved and records nothing.
func (s *Store) FinishGroup(ctx context.Context, st *Stage, index int, end GroupEnd) (*Stage, error) {
	if len(end.Steps) > MaxStepsPerGroup {
		return nil, fmt.Errorf("finish group %d of stage %s: %d steps, at most %d", index, st.ID, len(end.Steps), MaxStepsPerGroup)
	}
	now := s.now()
	c := ddb.Change{
		Set:    []string{"#cur = :next", "#ge = :ended"},
		Cond:   "#cur = :n AND attribute_not_exists(#rel)",
		Names:  map[string]string{"#cur": attrCursor, "#ge": attrGroupEndedAt, "#rel": attrReleasedAt},
		Values: map[string]types.AttributeValue{":n": ddb.Num(int64(index)), ":next": ddb.Num(int64(index + 1)), ":ended": ddb.Millis(end.EndedAt)},
	}
	ending(&c, end.Result, end.Reason, now)
	writes := []types.TransactWriteItem{
		{Update: s.stageUpdate(st.ID, c)},
		{Update: &types.Update{
			TableName: aws.String(s.Table), Key: groupKey(st.ID, index),
			UpdateExpression:          aws.String("SET #gs = :state, #sa = :started, #ea = :ended"),
			ConditionExpression:       aws.String("attribute_exists(pk)"),
			ExpressionAttributeNames:  map[string]string{"#gs": attrGroupState, "#sa": attrStartedAt, "#ea": attrEndedAt},
			ExpressionAttributeValues: map[string]types.AttributeValue{":state": ddb.Str(end.State), ":started": ddb.Millis(end.StartedAt), ":ended": ddb.Millis(end.EndedAt)},
		}},
	}
	expires := ddb.Num(st.Deadline.Add(recordRetention).Unix())
	for _, step := range end.Steps {
		item := stepKey(st.ID, step.ID)
		item[attrStageID] = ddb.Str(st.ID)
		item[attrStepID] = ddb.Str(step.ID)
		item[attrGroupIndex] = ddb.Num(int64(index))
		item[attrStepState] = ddb.Str(step.State)
		item[ddb.TTLAttribute] = expires
		ddb.SetBytes(item, attrStepResult, step.Result)
		if err := tooLarge(checkItemSize(fmt.Sprintf("the record of step %s of stage %s", step.ID, st.ID), item, MaxItemBytes)); err != nil {
			return nil, fmt.Errorf("finish group %d of stage %s: %w", index, st.ID, err)
		}
		writes = append(writes, types.TransactWriteItem{Put: &types.Put{TableName: aws.String(s.Table), Item: item}})
	}
	if err := tooLarge(checkTransactSize(fmt.Sprintf("the end of group %d of stage %s (one transaction)", index, st.ID), writes)); err != nil {
		return nil, err
	}
	if err := ddb.Transact(ctx, s.DB, &dynamodb.TransactWriteItemsInput{TransactItems: writes}, ErrGroupMoved, lease.ErrNotFound); err != nil {
		return nil, fmt.Errorf("finish group %d of stage %s: %w", index, st.ID, err)
	}
	return s.GetStage(ctx, st.ID)
}

// Records is everything recorded of a stage.
type Records struct {
	Stage  *Stage
	Groups []Group
	Steps  map[string]StepRecord
}

// StageRecords reads a stage's records (one query, strongly consistent).
func (s *Store) StageRecords(ctx context.Context, id string) (*Records, error) {
	r := &Records{Steps: map[string]StepRecord{}}
	p := dynamodb.NewQueryPaginator(s.DB, &dynamodb.QueryInput{
		TableName:                 aws.String(s.Table),
		KeyConditionExpression:    aws.String("pk = :pk"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":pk": ddb.Str(stageKeyPrefix + id)},
		ConsistentRead:            aws.Bool(true),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("read records of stage %s: %w", id, err)
		}
		for _, item := range page.Items {
			sk := ddb.GetString(item, ddb.AttrSK)
			switch {
			case sk == stageMetaSK:
				if r.Stage, err = decodeStage(item); err != nil {
					return nil, err
				}
			case strings.HasPrefix(sk, groupSKPrefix):
				g, err := decodeGroup(item)
				if err != nil {
					return nil, err
				}
				r.Groups = append(r.Groups, *g)
			case strings.HasPrefix(sk, stepSKPrefix):
				index, err := ddb.GetInt(item, attrGroupIndex)
				if err != nil {
					return nil, err
				}
				rec := StepRecord{ID: ddb.GetString(item, attrStepID), Group: int(index), State: ddb.GetString(item, attrStepState), Result: ddb.GetBytes(item, attrStepResult)}
				r.Steps[rec.ID] = rec
			}
		}
	}
	if r.Stage == nil {
		return nil, fmt.Errorf("stage %s: %w", id, ErrStageNotFound)
	}
	return r, nil
}

// DeleteSecrets deletes the sealed secrets of the stage's groups (the
// stage's own go with its release).
func (s *Store) DeleteSecrets(ctx context.Context, stageID string, groups []Group) error {
	var errs []error
	for _, g := range groups {
		if len(g.Sealed) == 0 {
			continue
		}
		_, err := s.DB.UpdateItem(ctx, &dynamodb.UpdateItemInput{
			TableName: aws.String(s.Table), Key: groupKey(stageID, g.Index),
			UpdateExpression:         aws.String("REMOVE #sealed"),
			ExpressionAttributeNames: map[string]string{"#sealed": attrSealed},
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("forget the secrets of group %d of stage %s: %w", g.Index, stageID, err))
		}
	}
	return errors.Join(errs...)
}
