package lease

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// Stage and step records: pk = STAGE#<id>, sk = META for the stage and
// STEP#<id> for each step. A stage's lease is taken and released in one
// transaction with its VM item, so a stage holds at most one VM, a retried
// acquire gets the same one, and only one release ever frees it.
const (
	stageMetaSK     = "META"
	attrStageID     = "stage_id"
	attrStageState  = "stage_state"
	attrVM          = "vm"
	attrDeadline    = "deadline"
	attrReleasedAt  = "released_at"
	attrExpiresAt   = "expires_at" // the table's TTL attribute, epoch seconds
	attrStepID      = "step_id"
	attrStepState   = "step_state"
	attrSpec        = "spec"
	attrResult      = "result"
	stepSKPrefix    = "STEP#"
	recordRetention = 7 * 24 * time.Hour
)

// ErrStageExists means a stage with this id was created already.
var ErrStageExists = errors.New("stage already exists")

// Stage is a stage's record.
type Stage struct {
	ID   string
	Pool string
	// State is the orchestrator's word for where the stage is; the store
	// keeps it, and only moves it under a condition on the state expected.
	State string
	// VM is the launch id of the VM the stage holds (or held).
	VM         string
	CreatedAt  time.Time
	Deadline   time.Time
	ReleasedAt time.Time
}

func stageKey(id string) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{attrPK: str("STAGE#" + id), attrSK: str(stageMetaSK)}
}

func decodeStage(item map[string]types.AttributeValue) (*Stage, error) {
	st := &Stage{
		ID: getString(item, attrStageID), Pool: getString(item, attrPool), State: getString(item, attrStageState),
		VM: getString(item, attrVM),
	}
	var err error
	if st.CreatedAt, err = getTime(item, attrCreatedAt); err != nil {
		return nil, err
	}
	if st.Deadline, err = getTime(item, attrDeadline); err != nil {
		return nil, err
	}
	if st.ReleasedAt, err = getTime(item, attrReleasedAt); err != nil {
		return nil, err
	}
	return st, nil
}

// CreateStage records a new stage in state "pending". A stage id is used
// once: creating it again returns the existing record and ErrStageExists.
func (s *Store) CreateStage(ctx context.Context, id, pool string, deadline time.Time) (*Stage, error) {
	if id == "" || pool == "" {
		return nil, errors.New("create stage: id and pool are required")
	}
	now := s.now()
	item := stageKey(id)
	item[attrStageID] = str(id)
	item[attrPool] = str(pool)
	item[attrStageState] = str("pending")
	item[attrCreatedAt] = millis(now)
	item[attrDeadline] = millis(deadline)
	item[attrExpiresAt] = num(deadline.Add(recordRetention).Unix())
	_, err := s.DB.TransactWriteItems(ctx, &dynamodb.TransactWriteItemsInput{TransactItems: []types.TransactWriteItem{{Put: &types.Put{
		TableName: aws.String(s.Table), Item: item, ConditionExpression: aws.String("attribute_not_exists(pk)"),
	}}}})
	var canceled *types.TransactionCanceledException
	if errors.As(err, &canceled) {
		existing, gerr := s.GetStage(ctx, id)
		if gerr != nil {
			return nil, gerr
		}
		return existing, fmt.Errorf("create stage %s: %w", id, ErrStageExists)
	}
	if err != nil {
		return nil, fmt.Errorf("create stage %s: %w", id, err)
	}
	return decodeStage(item)
}

// GetStage reads a stage's record.
func (s *Store) GetStage(ctx context.Context, id string) (*Stage, error) {
	out, err := s.DB.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(s.Table), Key: stageKey(id), ConsistentRead: aws.Bool(true)})
	if err != nil {
		return nil, fmt.Errorf("get stage %s: %w", id, err)
	}
	if out.Item == nil {
		return nil, fmt.Errorf("stage %s: %w", id, ErrNotFound)
	}
	return decodeStage(out.Item)
}

// liveStage reads a stage's record; a released stage is ErrReleased for op.
func (s *Store) liveStage(ctx context.Context, id, op string) (*Stage, error) {
	st, err := s.GetStage(ctx, id)
	if err != nil {
		return nil, err
	}
	if !st.ReleasedAt.IsZero() {
		return nil, fmt.Errorf("%s stage %s: %w", op, id, ErrReleased)
	}
	return st, nil
}

// SetStageState moves the stage from state from to state to.
func (s *Store) SetStageState(ctx context.Context, id, from, to string) error {
	_, err := s.DB.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName:                 aws.String(s.Table),
		Key:                       stageKey(id),
		UpdateExpression:          aws.String("SET #s = :to"),
		ConditionExpression:       aws.String("#s = :from"),
		ExpressionAttributeNames:  map[string]string{"#s": attrStageState},
		ExpressionAttributeValues: map[string]types.AttributeValue{":from": str(from), ":to": str(to)},
	})
	if isConditionFailed(err) {
		st, gerr := s.GetStage(ctx, id)
		if gerr != nil {
			return gerr
		}
		return fmt.Errorf("stage %s is %s, not %s: %w", id, st.State, from, ErrState)
	}
	if err != nil {
		return fmt.Errorf("set stage %s state: %w", id, err)
	}
	return nil
}

// LeaseForStage gives the stage an idle VM of its pool until the stage's
// deadline, writing the VM item and the stage record in one transaction. A
// stage that holds a VM gets the same VM again; a released stage gets
// ErrReleased.
func (s *Store) LeaseForStage(ctx context.Context, stageID string) (*VM, error) {
	st, err := s.liveStage(ctx, stageID, "lease for")
	if err != nil {
		return nil, err
	}
	if st.VM != "" {
		return s.Get(ctx, st.Pool, st.VM)
	}
	vm, err := s.leaseAny(ctx, st.Pool, func(launchID string) (*VM, bool, error) {
		return s.tryLeaseForStage(ctx, st, launchID)
	})
	if err != nil {
		return nil, fmt.Errorf("stage %s: %w", stageID, err)
	}
	return vm, nil
}

// tryLeaseForStage leases one candidate; taken says another lessee had it.
func (s *Store) tryLeaseForStage(ctx context.Context, st *Stage, launchID string) (*VM, bool, error) {
	now := s.now()
	in := &dynamodb.TransactWriteItemsInput{TransactItems: []types.TransactWriteItem{
		{Update: s.moveUpdate(st.Pool, launchID, leaseMove(st.ID, st.Deadline), now)},
		{Update: &types.Update{
			TableName:                 aws.String(s.Table),
			Key:                       stageKey(st.ID),
			UpdateExpression:          aws.String("SET #vm = :vm"),
			ConditionExpression:       aws.String("attribute_exists(pk) AND attribute_not_exists(#vm) AND attribute_not_exists(#rel)"),
			ExpressionAttributeNames:  map[string]string{"#vm": attrVM, "#rel": attrReleasedAt},
			ExpressionAttributeValues: map[string]types.AttributeValue{":vm": str(launchID)},
		}},
	}}
	errTaken, errStageMoved := errors.New("taken"), errors.New("stage moved")
	err := s.transact(ctx, in, errTaken, errStageMoved)
	switch {
	case err == nil:
		vm, err := s.Get(ctx, st.Pool, launchID)
		return vm, false, err
	case errors.Is(err, errTaken), errors.Is(err, ErrConflict):
		return nil, true, nil
	case errors.Is(err, errStageMoved):
		// A concurrent acquire of the same stage won, or it was released.
		cur, gerr := s.GetStage(ctx, st.ID)
		if gerr != nil {
			return nil, false, gerr
		}
		if !cur.ReleasedAt.IsZero() {
			return nil, false, fmt.Errorf("lease for stage %s: %w", st.ID, ErrReleased)
		}
		vm, gerr := s.Get(ctx, cur.Pool, cur.VM)
		return vm, false, gerr
	default:
		return nil, false, fmt.Errorf("lease vm %s for stage %s: %w", launchID, st.ID, err)
	}
}

// ReleaseStage ends the stage's lease: its VM goes to releasing and the
// stage is marked released, in one transaction, exactly once. A stage that
// never got a VM is marked released too (nil VM). A second release gets
// ErrReleased.
func (s *Store) ReleaseStage(ctx context.Context, stageID string) (*VM, error) {
	st, err := s.liveStage(ctx, stageID, "release")
	if err != nil {
		return nil, err
	}
	now := s.now()
	markReleased := types.TransactWriteItem{Update: &types.Update{
		TableName:                 aws.String(s.Table),
		Key:                       stageKey(stageID),
		UpdateExpression:          aws.String("SET #rel = :now"),
		ConditionExpression:       aws.String("attribute_not_exists(#rel) AND " + vmCondition(st.VM)),
		ExpressionAttributeNames:  map[string]string{"#rel": attrReleasedAt, "#vm": attrVM},
		ExpressionAttributeValues: map[string]types.AttributeValue{":now": millis(now)},
	}}
	if st.VM != "" {
		markReleased.Update.ExpressionAttributeValues[":vm"] = str(st.VM)
	}
	items := []types.TransactWriteItem{markReleased}
	if st.VM != "" {
		items = append(items, types.TransactWriteItem{Update: s.moveUpdate(st.Pool, st.VM, releaseMove(stageID), now)})
	}
	err = s.transact(ctx, &dynamodb.TransactWriteItemsInput{TransactItems: items}, ErrReleased, errVMMoved)
	if errors.Is(err, errVMMoved) {
		// The reaper released the lease past its deadline, or reconcile removed
		// a VM whose instance was gone: the stage's VM is already on its way out.
		err = s.markStageReleased(ctx, stageID, now)
		if err == nil {
			return nil, nil
		}
	}
	if errors.Is(err, ErrReleased) {
		// A concurrent release won, or a lease landed meanwhile: look again.
		if cur, gerr := s.GetStage(ctx, stageID); gerr == nil && cur.ReleasedAt.IsZero() {
			return s.ReleaseStage(ctx, stageID)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("release stage %s: %w", stageID, err)
	}
	if st.VM == "" {
		return nil, nil
	}
	return s.Get(ctx, st.Pool, st.VM)
}

var errVMMoved = errors.New("the stage's vm is no longer leased to it")

func vmCondition(vm string) string {
	if vm == "" {
		return "attribute_not_exists(#vm)"
	}
	return "#vm = :vm"
}

func (s *Store) markStageReleased(ctx context.Context, stageID string, now time.Time) error {
	_, err := s.DB.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName:                 aws.String(s.Table),
		Key:                       stageKey(stageID),
		UpdateExpression:          aws.String("SET #rel = :now"),
		ConditionExpression:       aws.String("attribute_not_exists(#rel)"),
		ExpressionAttributeNames:  map[string]string{"#rel": attrReleasedAt},
		ExpressionAttributeValues: map[string]types.AttributeValue{":now": millis(now)},
	})
	if isConditionFailed(err) {
		return ErrReleased
	}
	return err
}

// Step is one step's record.
type Step struct {
	ID    string
	State string
	// Spec is the step's spec as the orchestrator encodes it (secrets
	// encrypted by then); Result its result.
	Spec, Result []byte
}

func stepKey(stageID, stepID string) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{attrPK: str("STAGE#" + stageID), attrSK: str(stepSKPrefix + stepID)}
}

// PutStep records a step of a stage that exists and is not released. A
// step id is used once: putting it again with the same spec is a no-op,
// with another spec ErrExists.
func (s *Store) PutStep(ctx context.Context, stageID string, step Step) error {
	item := stepKey(stageID, step.ID)
	item[attrStepID] = str(step.ID)
	item[attrStepState] = str(step.State)
	if len(step.Spec) > 0 {
		item[attrSpec] = &types.AttributeValueMemberB{Value: step.Spec}
	}
	item[attrExpiresAt] = num(s.now().Add(recordRetention).Unix())
	err := s.transact(ctx, &dynamodb.TransactWriteItemsInput{TransactItems: []types.TransactWriteItem{
		{ConditionCheck: &types.ConditionCheck{
			TableName:                aws.String(s.Table),
			Key:                      stageKey(stageID),
			ConditionExpression:      aws.String("attribute_exists(pk) AND attribute_not_exists(#rel)"),
			ExpressionAttributeNames: map[string]string{"#rel": attrReleasedAt},
		}},
		{Put: &types.Put{TableName: aws.String(s.Table), Item: item, ConditionExpression: aws.String("attribute_not_exists(pk)")}},
	}}, errStageGone, ErrExists)
	if errors.Is(err, ErrExists) {
		steps, lerr := s.Steps(ctx, stageID)
		if lerr != nil {
			return lerr
		}
		for _, existing := range steps {
			if existing.ID == step.ID && string(existing.Spec) == string(step.Spec) {
				return nil
			}
		}
	}
	if err != nil {
		return fmt.Errorf("put step %s of stage %s: %w", step.ID, stageID, err)
	}
	return nil
}

var errStageGone = errors.New("stage does not exist or was released")

// UpdateStep moves a step from state from to state to and stores its result.
func (s *Store) UpdateStep(ctx context.Context, stageID, stepID, from, to string, result []byte) error {
	in := &dynamodb.UpdateItemInput{
		TableName:                 aws.String(s.Table),
		Key:                       stepKey(stageID, stepID),
		UpdateExpression:          aws.String("SET #s = :to REMOVE #r"),
		ConditionExpression:       aws.String("#s = :from"),
		ExpressionAttributeNames:  map[string]string{"#s": attrStepState, "#r": attrResult},
		ExpressionAttributeValues: map[string]types.AttributeValue{":from": str(from), ":to": str(to)},
	}
	if len(result) > 0 {
		in.UpdateExpression = aws.String("SET #s = :to, #r = :r")
		in.ExpressionAttributeValues[":r"] = &types.AttributeValueMemberB{Value: result}
	}
	_, err := s.DB.UpdateItem(ctx, in)
	if isConditionFailed(err) {
		return fmt.Errorf("update step %s of stage %s: not %s, or no such step: %w", stepID, stageID, from, ErrState)
	}
	if err != nil {
		return fmt.Errorf("update step %s of stage %s: %w", stepID, stageID, err)
	}
	return nil
}

// Steps returns the stage's step records in id order.
func (s *Store) Steps(ctx context.Context, stageID string) ([]Step, error) {
	var steps []Step
	p := dynamodb.NewQueryPaginator(s.DB, &dynamodb.QueryInput{
		TableName:                 aws.String(s.Table),
		KeyConditionExpression:    aws.String("pk = :pk AND begins_with(sk, :step)"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":pk": str("STAGE#" + stageID), ":step": str(stepSKPrefix)},
		ConsistentRead:            aws.Bool(true),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("list steps of stage %s: %w", stageID, err)
		}
		for _, item := range page.Items {
			st := Step{ID: getString(item, attrStepID), State: getString(item, attrStepState)}
			if b, ok := item[attrSpec].(*types.AttributeValueMemberB); ok {
				st.Spec = b.Value
			}
			if b, ok := item[attrResult].(*types.AttributeValueMemberB); ok {
				st.Result = b.Value
			}
			steps = append(steps, st)
		}
	}
	return steps, nil
}
