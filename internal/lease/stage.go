package lease

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
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
	attrExpiresAt    = "expires_at" // the table's TTL attribute, epoch seconds
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
	stageKeyPrefix   = "STAGE#"
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
	return map[string]types.AttributeValue{attrPK: str(stageKeyPrefix + id), attrSK: str(stageMetaSK)}
}

func decodeStage(item map[string]types.AttributeValue) (*Stage, error) {
	st := &Stage{
		ID: getString(item, attrStageID), Pool: getString(item, attrPool), Owner: getString(item, attrOwner), SpecHash: getString(item, attrSpecHash),
		Spec: getBytes(item, attrSpec), Sealed: getBytes(item, attrSealed), Final: getBool(item, attrFinal),
		VM: getString(item, attrVM), Launched: getString(item, attrLaunched), BootID: getString(item, attrBootID),
		VMAddress: getString(item, attrVMAddress), Result: getString(item, attrResult), Reason: getString(item, attrReason),
		bytes: itemBytes(item), counted: getBool(item, attrCounted),
	}
	if set, ok := item[attrStepIDs].(*types.AttributeValueMemberSS); ok {
		st.stepIDs = set.Value
	}
	var errs []error
	for name, dst := range map[string]*time.Time{
		attrCreatedAt: &st.CreatedAt, attrDeadline: &st.Deadline, attrLeasedAt: &st.LeasedAt, attrBoundAt: &st.BoundAt,
		attrGroupEndedAt: &st.GroupEndedAt, attrEndedAt: &st.EndedAt, attrReleasedAt: &st.ReleasedAt,
	} {
		t, err := getTime(item, name)
		errs = append(errs, err)
		*dst = t
	}
	for name, dst := range map[string]*int{attrGroups: &st.Groups, attrCursor: &st.Cursor, attrDropped: &st.Dropped} {
		n, err := getInt(item, name)
		errs = append(errs, err)
		*dst = int(n)
	}
	var err error
	st.Version, err = getInt(item, attrVersion)
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
	expires := num(ns.Deadline.Add(recordRetention).Unix())
	item := stageKey(ns.ID)
	item[attrStageID] = str(ns.ID)
	item[attrPool] = str(ns.Pool)
	if ns.Owner != "" {
		item[attrOwner] = str(ns.Owner)
	}
	counted := ns.Owner != "" && ns.OwnerLimit > 0
	if counted {
		item[attrCounted] = &types.AttributeValueMemberBOOL{Value: true}
	}
	item[attrSpecHash] = str(ns.SpecHash)
	item[attrCreatedAt] = millis(now)
	item[attrDeadline] = millis(ns.Deadline)
	item[attrExpiresAt] = expires
	item[attrGroups] = num(int64(len(ns.Groups)))
	item[attrCursor] = num(0)
	item[attrVersion] = num(1)
	setBytes(item, attrSpec, ns.Spec)
	setBytes(item, attrSealed, ns.Sealed)
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
	err := s.transact(ctx, &dynamodb.TransactWriteItemsInput{TransactItems: writes}, reasons...)
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

// stageChange is a conditional update of a stage's META item that bumps
// its version.
type stageChange struct {
	set, remove []string
	cond        string
	names       map[string]string
	values      map[string]types.AttributeValue
}

func (s *Store) stageUpdate(id string, c stageChange) *types.Update {
	names := map[string]string{"#v": attrVersion}
	for k, v := range c.names {
		names[k] = v
	}
	values := map[string]types.AttributeValue{":one": num(1)}
	for k, v := range c.values {
		values[k] = v
	}
	expr := "SET " + strings.Join(append([]string{"#v = #v + :one"}, c.set...), ", ")
	if len(c.remove) > 0 {
		expr += " REMOVE " + strings.Join(c.remove, ", ")
	}
	cond := "attribute_exists(pk)"
	if c.cond != "" {
		cond += " AND " + c.cond
	}
	return &types.Update{
		TableName: aws.String(s.Table), Key: stageKey(id),
		UpdateExpression: aws.String(expr), ConditionExpression: aws.String(cond),
		ExpressionAttributeNames: names, ExpressionAttributeValues: values,
	}
}

// changeStage applies c; a failed condition is told by failed, which reads
// the stage.
func (s *Store) changeStage(ctx context.Context, id string, c stageChange, failed func(*Stage) error) (*Stage, error) {
	out, err := s.DB.UpdateItem(ctx, updateItem(s.stageUpdate(id, c)))
	if isConditionFailed(err) {
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
func ending(c *stageChange, result, reason string, now time.Time) {
	if result == "" {
		return
	}
	c.set = append(c.set, "#res = if_not_exists(#res, :res)", "#why = if_not_exists(#why, :why)", "#end = if_not_exists(#end, :end)")
	c.names["#res"], c.names["#why"], c.names["#end"] = attrResult, attrReason, attrEndedAt
	c.values[":res"], c.values[":why"], c.values[":end"] = str(result), str(truncateReason(reason)), millis(now)
}

// EndStage records the stage's result and why, unless it has one: then it
// returns the stage and ErrStageEnded. A released stage is ErrReleased.
func (s *Store) EndStage(ctx context.Context, id, result, reason string) (*Stage, error) {
	if result == "" {
		return nil, fmt.Errorf("end stage %s: the result is empty", id)
	}
	c := stageChange{
		cond:  "attribute_not_exists(#res) AND attribute_not_exists(#rel)",
		names: map[string]string{"#rel": attrReleasedAt}, values: map[string]types.AttributeValue{},
	}
	ending(&c, result, reason, s.now())
	st, err := s.changeStage(ctx, id, c, func(st *Stage) error {
		if !st.ReleasedAt.IsZero() {
			return ErrReleased
		}
		return ErrStageEnded
	})
	if err != nil {
		return st, fmt.Errorf("end stage %s: %w", id, err)
	}
	return st, nil
}

// SetLaunched records the VM launched on demand for the stage: one per
// stage. A stage that has one gets ErrExists.
func (s *Store) SetLaunched(ctx context.Context, id, launchID string) error {
	_, err := s.changeStage(ctx, id, stageChange{
		set:    []string{"#l = :l"},
		cond:   "attribute_not_exists(#l) AND attribute_not_exists(#rel)",
		names:  map[string]string{"#l": attrLaunched, "#rel": attrReleasedAt},
		values: map[string]types.AttributeValue{":l": str(launchID)},
	}, func(st *Stage) error {
		if !st.ReleasedAt.IsZero() {
			return ErrReleased
		}
		return ErrExists
	})
	if err != nil {
		return fmt.Errorf("record the vm launched for stage %s: %w", id, err)
	}
	return nil
}

// MarkBound records that the agent of the stage's VM launchID is bound to
// the stage, and its boot id. Repeating it keeps the first bind time.
func (s *Store) MarkBound(ctx context.Context, id string, vm *VM, bootID string) (*Stage, error) {
	launchID := vm.LaunchID
	st, err := s.changeStage(ctx, id, stageChange{
		set:   []string{"#b = if_not_exists(#b, :now)", "#boot = :boot", "#addr = :addr"},
		cond:  "#vm = :vm AND attribute_not_exists(#rel)",
		names: map[string]string{"#b": attrBoundAt, "#boot": attrBootID, "#addr": attrVMAddress, "#vm": attrVM, "#rel": attrReleasedAt},
		values: map[string]types.AttributeValue{
			":now": millis(s.now()), ":boot": str(bootID), ":addr": str(vm.Address), ":vm": str(launchID),
		},
	}, func(st *Stage) error {
		if !st.ReleasedAt.IsZero() {
			return ErrReleased
		}
		return fmt.Errorf("%w: the stage holds vm %q, not %s", ErrNotHolder, st.VM, launchID)
	})
	if err != nil {
		return st, fmt.Errorf("mark stage %s bound: %w", id, err)
	}
	return st, nil
}

// LeaseForStage gives the stage, as the caller just read it, an idle VM of
// its pool until leaseDeadline, writing the VM item and the stage record in
// one transaction (whose conditions catch a record that moved since). A
// stage that holds a VM gets the same VM again; a released stage gets
// ErrReleased. fresh says this call leased it (the one to count the lease).
func (s *Store) LeaseForStage(ctx context.Context, st *Stage, leaseDeadline time.Time) (vm *VM, fresh bool, err error) {
	if !st.ReleasedAt.IsZero() {
		return nil, false, fmt.Errorf("lease for stage %s: %w", st.ID, ErrReleased)
	}
	if st.VM != "" {
		vm, err := s.Get(ctx, st.Pool, st.VM)
		return vm, false, err
	}
	vm, err = s.leaseAny(ctx, st.Pool, func(launchID string) (*VM, bool, error) {
		vm, taken, won, err := s.tryLeaseForStage(ctx, st, launchID, leaseDeadline)
		fresh = won
		return vm, taken, err
	})
	if err != nil {
		return nil, false, fmt.Errorf("stage %s: %w", st.ID, err)
	}
	return vm, fresh, nil
}

// tryLeaseForStage leases one candidate; taken says another lessee had it,
// won that this call's transaction leased it (else a concurrent lease of
// the same stage did, and vm is the one it leased).
func (s *Store) tryLeaseForStage(ctx context.Context, st *Stage, launchID string, leaseDeadline time.Time) (vm *VM, taken, won bool, err error) {
	now := s.now()
	in := &dynamodb.TransactWriteItemsInput{TransactItems: []types.TransactWriteItem{
		{Update: s.moveUpdate(st.Pool, launchID, leaseMove(st.ID, leaseDeadline), now)},
		{Update: s.stageUpdate(st.ID, stageChange{
			set:    []string{"#vm = :vm", "#la = :now"},
			cond:   "attribute_not_exists(#vm) AND attribute_not_exists(#rel)",
			names:  map[string]string{"#vm": attrVM, "#la": attrLeasedAt, "#rel": attrReleasedAt},
			values: map[string]types.AttributeValue{":vm": str(launchID), ":now": millis(now)},
		})},
	}}
	errTaken := errors.New("taken")
	err = s.transact(ctx, in, errTaken, errStageMoved)
	switch {
	case err == nil:
		vm, err := s.Get(ctx, st.Pool, launchID)
		return vm, false, err == nil, err
	case errors.Is(err, errTaken), errors.Is(err, ErrConflict):
		return nil, true, false, nil
	case errors.Is(err, errStageMoved):
		// A concurrent acquire of the same stage won, or it was released.
		cur, gerr := s.GetStage(ctx, st.ID)
		if gerr != nil {
			return nil, false, false, gerr
		}
		if !cur.ReleasedAt.IsZero() {
			return nil, false, false, fmt.Errorf("lease for stage %s: %w", st.ID, ErrReleased)
		}
		vm, gerr := s.Get(ctx, cur.Pool, cur.VM)
		return vm, false, false, gerr
	default:
		return nil, false, false, fmt.Errorf("lease vm %s for stage %s: %w", launchID, st.ID, err)
	}
}

// DropStageVM gives up the stage's VM before it was bound (its agent never
// answered): the VM goes to releasing, to be terminated and removed, and the
// stage may lease another. It returns the VM as it is now.
func (s *Store) DropStageVM(ctx context.Context, stageID, launchID string) (*VM, error) {
	st, err := s.liveStage(ctx, stageID, "drop the vm of")
	if err != nil {
		return nil, err
	}
	in := &dynamodb.TransactWriteItemsInput{TransactItems: []types.TransactWriteItem{
		{Update: s.stageUpdate(stageID, stageChange{
			set:    []string{"#d = if_not_exists(#d, :zero) + :one"},
			remove: []string{"#vm", "#la"},
			cond:   "#vm = :vm AND attribute_not_exists(#b) AND attribute_not_exists(#rel)",
			names:  map[string]string{"#d": attrDropped, "#vm": attrVM, "#la": attrLeasedAt, "#b": attrBoundAt, "#rel": attrReleasedAt},
			values: map[string]types.AttributeValue{":vm": str(launchID), ":zero": num(0)},
		})},
		{Update: s.moveUpdate(st.Pool, launchID, releaseMove(stageID), s.now())},
	}}
	if err := s.transact(ctx, in, ErrState, ErrState); err != nil {
		return nil, fmt.Errorf("drop vm %s of stage %s: %w", launchID, stageID, err)
	}
	return s.Get(ctx, st.Pool, launchID)
}

// ReleaseStage ends the stage's lease: its VM goes to releasing, the stage
// is marked released (with result and reason, unless it has a result) and
// its secrets are deleted, in one transaction, exactly once. A stage that
// never got a VM is released too (nil VM). A second release gets
// ErrReleased.
func (s *Store) ReleaseStage(ctx context.Context, stageID, result, reason string) (*VM, error) {
	st, err := s.liveStage(ctx, stageID, "release")
	if err != nil {
		return nil, err
	}
	now := s.now()
	// The stage's own writes (its record, its owner's count), then its VM's.
	items := []types.TransactWriteItem{{Update: s.releaseUpdate(stageID, st.VM, result, reason, now)}}
	reasons := []error{ErrReleased}
	if st.counted {
		items = append(items, types.TransactWriteItem{Update: s.uncountStage(st.Owner)})
		reasons = append(reasons, nil)
	}
	own := len(items)
	if st.VM != "" {
		items = append(items, types.TransactWriteItem{Update: s.moveUpdate(st.Pool, st.VM, releaseMove(stageID), now)})
		reasons = append(reasons, errVMMoved)
	}
	err = s.transact(ctx, &dynamodb.TransactWriteItemsInput{TransactItems: items}, reasons...)
	if errors.Is(err, errVMMoved) {
		// The reaper released the lease past its deadline, or reconcile removed
		// a VM whose instance was gone: the stage's VM is already on its way out.
		err = s.transact(ctx, &dynamodb.TransactWriteItemsInput{TransactItems: items[:own]}, ErrReleased)
		if err == nil {
			return nil, nil
		}
	}
	if errors.Is(err, ErrReleased) {
		// A concurrent release won, or a lease landed meanwhile: look again.
		if cur, gerr := s.GetStage(ctx, stageID); gerr == nil && cur.ReleasedAt.IsZero() {
			return s.ReleaseStage(ctx, stageID, result, reason)
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

// releaseUpdate marks the stage released, on the condition that it still
// holds vm (or none), and deletes its secrets.
func (s *Store) releaseUpdate(stageID, vm, result, reason string, now time.Time) *types.Update {
	c := stageChange{
		set:    []string{"#rel = :now"},
		remove: []string{"#sealed"},
		cond:   "attribute_not_exists(#rel) AND attribute_not_exists(#vm)",
		names:  map[string]string{"#rel": attrReleasedAt, "#vm": attrVM, "#sealed": attrSealed},
		values: map[string]types.AttributeValue{":now": millis(now)},
	}
	if vm != "" {
		c.cond = "attribute_not_exists(#rel) AND #vm = :vm"
		c.values[":vm"] = str(vm)
	}
	ending(&c, result, reason, now)
	return s.stageUpdate(stageID, c)
}
