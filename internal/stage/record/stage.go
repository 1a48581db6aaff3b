package record

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/slipway-ci/slipway/internal/ddb"
	"github.com/slipway-ci/slipway/internal/lease"
)

// Stage records: pk = STAGE#<id>, with sk = META for the stage, GROUP#<n> for
// each group of steps (its specs) and STEP#<id> for each step that ran (its
// result). A stage's lease is taken and released in one transaction with its
// VM item, so a stage holds at most one VM, a retried acquire gets the same
// one, and only one release ever frees it. Every change of the META item
// bumps its version, which long-polls watch.
const (
	stageMetaSK      = "META"
	attrStageID      = "stage_id"
	attrVM           = "vm"
	attrDeadline     = "deadline"
	attrReleasedAt   = "released_at"
	attrPool         = "pool"
	attrCreatedAt    = "created_at"
	attrVersion      = "version"
	attrSpec         = "spec"
	attrSpecHash     = "spec_hash"
	attrSealed       = "sealed"
	attrGroups       = "groups"
	attrFinal        = "final"
	attrCursor       = "cursor"
	attrStepIDs      = "step_ids"
	attrLeasedAt     = "leased_at"
	attrBoundAt      = "bound_at"
	attrBootID       = "boot_id"
	attrVMAddress    = "vm_address"
	attrLaunched     = "launched"
	attrDropped      = "dropped"
	attrResult       = "result"
	attrReason       = "reason"
	attrEndedAt      = "ended_at"
	attrGroupEndedAt = "group_ended_at"
	attrOwner        = "owner"
	recordRetention  = 7 * 24 * time.Hour
	stageKeyPrefix   = ddb.StagePartitions
	maxTransactItems = 100
	// The stage's META item, its groups, and its entry in the index.
	maxGroupsAtCreate = maxTransactItems - 2
)

// Errors of stage records.
var (
	// ErrStageExists means a stage with this id was created already.
	ErrStageExists = errors.New("stage already exists")
	// ErrStageNotFound means there is no record of the stage.
	ErrStageNotFound = errors.New("no such stage")
	// ErrStageEnded means the stage has its result already: nothing more runs
	// in it.
	ErrStageEnded = errors.New("stage has ended")
	// ErrStageClosed means the stage's final group was given already.
	ErrStageClosed = errors.New("stage is closed: its final group was given")
	// ErrStepExists means a step id is taken by another step of the stage.
	ErrStepExists = errors.New("step id already used in this stage")
	// ErrGroupMoved means the group is not the stage's current one any more:
	// another invocation finished it, or the stage was released.
	ErrGroupMoved = errors.New("group is not the stage's current group")
)

// Stage is a stage's META record.
type Stage struct {
	ID   string
	Pool string
	// Owner is the principal that created the stage: only it (and the
	// deployment's operators) may see it and act on it. Empty for records
	// written before stages had owners.
	Owner string
	// SpecHash identifies the request that created the stage; Spec is its
	// settings as the orchestrator encodes them, without secrets; Sealed its
	// secrets, encrypted (nil once released).
	SpecHash string
	Spec     []byte
	Sealed   []byte
	// Groups counts the groups given; Final says the last one was final;
	// Cursor counts the groups that ended.
	Groups int
	Final  bool
	Cursor int
	// VM is the launch id of the VM the stage holds (or held).
	VM string
	// Launched is the VM launched on demand for this stage, if any.
	Launched string
	// Dropped counts VMs given up on before binding (their agent never
	// answered).
	Dropped int
	BootID  string
	// VMAddress is where the bound VM's agent listens (host:port).
	VMAddress string
	// Result is set once the stage's outcome is known; Reason says why.
	Result, Reason string
	CreatedAt      time.Time
	Deadline       time.Time
	LeasedAt       time.Time
	BoundAt        time.Time
	GroupEndedAt   time.Time
	EndedAt        time.Time
	ReleasedAt     time.Time
	Version        int64
	// stepIDs are the ids of every step given, as read with the record:
	// an add tells a retry from a clash by them.
	stepIDs []string
	// bytes is the record's size as DynamoDB counts it, when read: an add
	// checks that the step ids it adds still fit.
	bytes int
	// counted says the stage counts among its owner's active stages until
	// its release.
	counted bool
}

func stageKey(id string) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{ddb.AttrPK: ddb.Str(stageKeyPrefix + id), ddb.AttrSK: ddb.Str(stageMetaSK)}
}

func decodeStage(item map[string]types.AttributeValue) (*Stage, error) {
	st := &Stage{
		ID: ddb.GetString(item, attrStageID), Pool: ddb.GetString(item, attrPool), Owner: ddb.GetString(item, attrOwner), SpecHash: ddb.GetString(item, attrSpecHash),
		Spec: ddb.GetBytes(item, attrSpec), Sealed: ddb.GetBytes(item, attrSealed), Final: ddb.GetBool(item, attrFinal),
		VM: ddb.GetString(item, attrVM), Launched: ddb.GetString(item, attrLaunched), BootID: ddb.GetString(item, attrBootID),
		VMAddress: ddb.GetString(item, attrVMAddress), Result: ddb.GetString(item, attrResult), Reason: ddb.GetString(item, attrReason),
		bytes: itemBytes(item), counted: ddb.GetBool(item, attrCounted),
	}
	if set, ok := item[attrStepIDs].(*types.AttributeValueMemberSS); ok {
		st.stepIDs = set.Value
	}
	var errs []error
	for name, dst := range map[string]*time.Time{
		attrCreatedAt: &st.CreatedAt, attrDeadline: &st.Deadline, attrLeasedAt: &st.LeasedAt, attrBoundAt: &st.BoundAt,
		attrGroupEndedAt: &st.GroupEndedAt, attrEndedAt: &st.EndedAt, attrReleasedAt: &st.ReleasedAt,
	} {
		t, err := ddb.GetTime(item, name)
		errs = append(errs, err)
		*dst = t
	}
	for name, dst := range map[string]*int{attrGroups: &st.Groups, attrCursor: &st.Cursor, attrDropped: &st.Dropped} {
		n, err := ddb.GetInt(item, name)
		errs = append(errs, err)
		*dst = int(n)
	}
	var err error
	st.Version, err = ddb.GetInt(item, attrVersion)
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("stage record %s: %w", st.ID, err)
	}
	return st, nil
}

// NewStage is what CreateStage records.
type NewStage struct {
	ID, Pool string
	Owner    string
	// OwnerLimit, when above 0, is the most active stages Owner may have:
	// the stage is counted for its owner until its release, and refused
	// with an OwnerLimitError past it.
	OwnerLimit int
	SpecHash   string
	Spec       []byte
	Sealed     []byte
	Deadline   time.Time
	// Groups are the groups given at creation, the last one final or not.
	Groups []NewGroup
}

// CreateStage records a new stage with the groups given at creation, in one
// transaction, so at most 99 of them. A stage id is used once: creating it
// again returns the existing record and ErrStageExists, and the caller
// compares SpecHash to tell a retry from a clash.
func (s *Store) CreateStage(ctx context.Context, ns NewStage) (*Stage, error) {
	if ns.ID == "" || ns.Pool == "" {
		return nil, errors.New("create stage: id and pool are required")
	}
	if len(ns.Groups) > maxGroupsAtCreate {
		return nil, fmt.Errorf("create stage %s: %d groups, at most %d at creation", ns.ID, len(ns.Groups), maxGroupsAtCreate)
	}
	now := s.now()
	expires := ddb.Num(ns.Deadline.Add(recordRetention).Unix())
	item := stageKey(ns.ID)
	item[attrStageID] = ddb.Str(ns.ID)
	item[attrPool] = ddb.Str(ns.Pool)
	if ns.Owner != "" {
		item[attrOwner] = ddb.Str(ns.Owner)
	}
	counted := ns.Owner != "" && ns.OwnerLimit > 0
	if counted {
		item[attrCounted] = &types.AttributeValueMemberBOOL{Value: true}
	}
	item[attrSpecHash] = ddb.Str(ns.SpecHash)
	item[attrCreatedAt] = ddb.Millis(now)
	item[attrDeadline] = ddb.Millis(ns.Deadline)
	item[ddb.TTLAttribute] = expires
	item[attrGroups] = ddb.Num(int64(len(ns.Groups)))
	item[attrCursor] = ddb.Num(0)
	item[attrVersion] = ddb.Num(1)
	ddb.SetBytes(item, attrSpec, ns.Spec)
	ddb.SetBytes(item, attrSealed, ns.Sealed)
	var stepIDs []string
	for _, g := range ns.Groups {
		stepIDs = append(stepIDs, g.StepIDs...)
	}
	if len(stepIDs) > 0 {
		item[attrStepIDs] = &types.AttributeValueMemberSS{Value: stepIDs}
	}
	if n := len(ns.Groups); n > 0 && ns.Groups[n-1].Final {
		item[attrFinal] = &types.AttributeValueMemberBOOL{Value: true}
	}
	notExists := aws.String("attribute_not_exists(pk)")
	writes := []types.TransactWriteItem{
		{Put: &types.Put{TableName: aws.String(s.Table), Item: item, ConditionExpression: notExists}},
		{Put: &types.Put{TableName: aws.String(s.Table), Item: indexItem(ns.ID, ns.Pool, ns.Owner, now, expires)}},
	}
	sizes := []*OversizeRecord{checkItemSize("the record of stage "+ns.ID, item, MaxItemBytes-stageReserve)}
	for i, g := range ns.Groups {
		gi := groupItem(ns.ID, i, g, now, expires)
		sizes = append(sizes, checkItemSize(fmt.Sprintf("the record of group %d of stage %s", i, ns.ID), gi, MaxItemBytes-groupReserve))
		writes = append(writes, types.TransactWriteItem{Put: &types.Put{
			TableName: aws.String(s.Table), Item: gi, ConditionExpression: notExists,
		}})
	}
	sizes = append(sizes, checkTransactSize("the records of stage "+ns.ID+" (written in one transaction)", writes))
	if err := tooLarge(sizes...); err != nil {
		return nil, fmt.Errorf("create stage %s: %w", ns.ID, err)
	}
	reasons := make([]error, len(writes))
	reasons[0] = ErrStageExists
	if counted {
		// Last, so that the reasons of the others keep their places.
		writes = append(writes, types.TransactWriteItem{Update: s.countStage(ns.Owner, ns.OwnerLimit)})
		reasons = append(reasons, ErrOwnerLimit)
	}
	err := ddb.Transact(ctx, s.DB, &dynamodb.TransactWriteItemsInput{TransactItems: writes}, reasons...)
	if errors.Is(err, ErrOwnerLimit) {
		// A retry of a create that counted finds its stage: not a refusal.
		if existing, gerr := s.GetStage(ctx, ns.ID); gerr == nil {
			return existing, fmt.Errorf("create stage %s: %w", ns.ID, ErrStageExists)
		}
		active, _ := s.ActiveStages(ctx, ns.Owner)
		return nil, fmt.Errorf("create stage %s: %w", ns.ID, &OwnerLimitError{Owner: ns.Owner, Active: active, Most: ns.OwnerLimit})
	}
	if errors.Is(err, ErrStageExists) {
		existing, gerr := s.GetStage(ctx, ns.ID)
		if gerr != nil {
			return nil, gerr
		}
		return existing, fmt.Errorf("create stage %s: %w", ns.ID, ErrStageExists)
	}
	if err != nil {
		return nil, fmt.Errorf("create stage %s: %w", ns.ID, err)
	}
	return decodeStage(item)
}

// GetStage reads a stage's record, strongly consistent.
func (s *Store) GetStage(ctx context.Context, id string) (*Stage, error) {
	out, err := s.DB.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(s.Table), Key: stageKey(id), ConsistentRead: aws.Bool(true)})
	if err != nil {
		return nil, fmt.Errorf("get stage %s: %w", id, err)
	}
	if out.Item == nil {
		return nil, fmt.Errorf("stage %s: %w", id, ErrStageNotFound)
	}
	return decodeStage(out.Item)
}

// liveStage reads a stage's record; a released stage is lease.ErrReleased for op.
func (s *Store) liveStage(ctx context.Context, id, op string) (*Stage, error) {
	st, err := s.GetStage(ctx, id)
	if err != nil {
		return nil, err
	}
	if !st.ReleasedAt.IsZero() {
		return nil, fmt.Errorf("%s stage %s: %w", op, id, lease.ErrReleased)
	}
	return st, nil
}

// stageUpdate is c on the stage's META item, which must exist, bumping its
// version (which long-polls watch).
func (s *Store) stageUpdate(id string, c ddb.Change) *types.Update {
	return ddb.Change{
		Set:    []string{"#v = #v + :one"},
		Cond:   "attribute_exists(pk)",
		Names:  map[string]string{"#v": attrVersion},
		Values: map[string]types.AttributeValue{":one": ddb.Num(1)},
	}.With(c).Update(s.Table, stageKey(id))
}

// changeStage applies c; a failed condition is told by failed, which reads
// the stage.
func (s *Store) changeStage(ctx context.Context, id string, c ddb.Change, failed func(*Stage) error) (*Stage, error) {
	out, err := s.DB.UpdateItem(ctx, ddb.UpdateItem(s.stageUpdate(id, c)))
	if ddb.IsConditionFailed(err) {
		st, gerr := s.GetStage(ctx, id)
		if gerr != nil {
			return nil, gerr
		}
		return st, failed(st)
	}
	if err != nil {
		return nil, err
	}
	return decodeStage(out.Attributes)
}

// ending is the stage's result, set only where none is yet.
func ending(c *ddb.Change, result, reason string, now time.Time) {
	if result == "" {
		return
	}
	c.Set = append(c.Set, "#res = if_not_exists(#res, :res)", "#why = if_not_exists(#why, :why)", "#end = if_not_exists(#end, :end)")
	c.Names["#res"], c.Names["#why"], c.Names["#end"] = attrResult, attrReason, attrEndedAt
	c.Values[":res"], c.Values[":why"], c.Values[":end"] = ddb.Str(result), ddb.Str(truncateReason(reason)), ddb.Millis(now)
}

// EndStage records the stage's result and why, unless it has one: then it
// returns the stage and ErrStageEnded. A released stage is lease.ErrReleased.
func (s *Store) EndStage(ctx context.Context, id, result, reason string) (*Stage, error) {
	if result == "" {
		return nil, fmt.Errorf("end stage %s: the result is empty", id)
	}
	c := ddb.Change{
		Cond:  "attribute_not_exists(#res) AND attribute_not_exists(#rel)",
		Names: map[string]string{"#rel": attrReleasedAt}, Values: map[string]types.AttributeValue{},
	}
	ending(&c, result, reason, s.now())
	st, err := s.changeStage(ctx, id, c, func(st *Stage) error {
		if !st.ReleasedAt.IsZero() {
			return lease.ErrReleased
		}
		return ErrStageEnded
	})
	if err != nil {
		return st, fmt.Errorf("end stage %s: %w", id, err)
	}
	return st, nil
}

// SetLaunched records the VM launched on demand for the stage: one per
// stage. A stage that has one gets lease.ErrExists.
func (s *Store) SetLaunched(ctx context.Context, id, launchID string) error {
	_, err := s.changeStage(ctx, id, ddb.Change{
		Set:    []string{"#l = :l"},
		Cond:   "attribute_not_exists(#l) AND attribute_not_exists(#rel)",
		Names:  map[string]string{"#l": attrLaunched, "#rel": attrReleasedAt},
		Values: map[string]types.AttributeValue{":l": ddb.Str(launchID)},
	}, func(st *Stage) error {
		if !st.ReleasedAt.IsZero() {
			return lease.ErrReleased
		}
		return lease.ErrExists
	})
	if err != nil {
		return fmt.Errorf("record the vm launched for stage %s: %w", id, err)
	}
	return nil
}

// MarkBound records that the agent of the stage's VM launchID is bound to
// the stage, and its boot id. Repeating it keeps the first bind time.
func (s *Store) MarkBound(ctx context.Context, id string, vm *lease.VM, bootID string) (*Stage, error) {
	launchID := vm.LaunchID
	st, err := s.changeStage(ctx, id, ddb.Change{
		Set:   []string{"#b = if_not_exists(#b, :now)", "#boot = :boot", "#addr = :addr"},
		Cond:  "#vm = :vm AND attribute_not_exists(#rel)",
		Names: map[string]string{"#b": attrBoundAt, "#boot": attrBootID, "#addr": attrVMAddress, "#vm": attrVM, "#rel": attrReleasedAt},
		Values: map[string]types.AttributeValue{
			":now": ddb.Millis(s.now()), ":boot": ddb.Str(bootID), ":addr": ddb.Str(vm.Address), ":vm": ddb.Str(launchID),
		},
	}, func(st *Stage) error {
		if !st.ReleasedAt.IsZero() {
			return lease.ErrReleased
		}
		return fmt.Errorf("%w: the stage holds vm %q, not %s", lease.ErrNotHolder, st.VM, launchID)
	})
	if err != nil {
		return st, fmt.Errorf("mark stage %s bound: %w", id, err)
	}
	return st, nil
}
