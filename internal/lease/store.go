package lease

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/slipway-ci/slipway/internal/clock"

	"github.com/slipway-ci/slipway/internal/ddb"
)

// Launch describes a VM about to be launched.
type Launch struct {
	Pool     string
	LaunchID string
	// Max is the pool's max instances: the record fails with ErrPoolFull
	// rather than exceed it.
	Max int
}

// RecordLaunch writes the VM item (state launching) and reserves its place in
// the pool's capacity, in one transaction, before any instance exists.
func (s *Store) RecordLaunch(ctx context.Context, l Launch) (*VM, error) {
	if err := checkPool(l.Pool); err != nil {
		return nil, err
	}
	if err := ValidateLaunchID(l.LaunchID); err != nil {
		return nil, err
	}
	if l.Max <= 0 {
		return nil, fmt.Errorf("record launch in pool %s: max %d must be positive", l.Pool, l.Max)
	}
	now := s.now()
	item := map[string]types.AttributeValue{
		ddb.AttrPK: ddb.Str(poolPK(l.Pool)), ddb.AttrSK: ddb.Str(vmSK(l.LaunchID)),
		attrPool: ddb.Str(l.Pool), ddb.AttrLaunchID: ddb.Str(l.LaunchID), attrState: ddb.Str(string(Launching)),
		attrCreatedAt: ddb.Millis(now), attrStateAt: ddb.Millis(now), attrVersion: ddb.Num(1),
	}
	in := &dynamodb.TransactWriteItemsInput{TransactItems: []types.TransactWriteItem{
		{Update: &types.Update{
			TableName:                 aws.String(s.Table),
			Key:                       capacityKey(l.Pool),
			UpdateExpression:          aws.String("SET #c = if_not_exists(#c, :zero) + :one"),
			ConditionExpression:       aws.String("attribute_not_exists(#c) OR #c < :max"),
			ExpressionAttributeNames:  map[string]string{"#c": attrCount},
			ExpressionAttributeValues: map[string]types.AttributeValue{":zero": ddb.Num(0), ":one": ddb.Num(1), ":max": ddb.Num(int64(l.Max))},
		}},
		{Put: &types.Put{
			TableName:           aws.String(s.Table),
			Item:                item,
			ConditionExpression: aws.String("attribute_not_exists(pk)"),
		}},
	}}
	if err := ddb.Transact(ctx, s.DB, in, ErrPoolFull, ErrExists); err != nil {
		return nil, fmt.Errorf("record launch %s in pool %s: %w", l.LaunchID, l.Pool, err)
	}
	return decodeVM(item)
}

// Remove deletes a VM item that is in state from (releasing once its
// instance is terminated, or launching when no instance was made) and returns
// its place in the pool's capacity, in one transaction.
func (s *Store) Remove(ctx context.Context, pool, launchID string, from State) error {
	in := &dynamodb.TransactWriteItemsInput{TransactItems: []types.TransactWriteItem{
		{Delete: &types.Delete{
			TableName:                 aws.String(s.Table),
			Key:                       vmKey(pool, launchID),
			ConditionExpression:       aws.String("#st = :from"),
			ExpressionAttributeNames:  map[string]string{"#st": attrState},
			ExpressionAttributeValues: map[string]types.AttributeValue{":from": ddb.Str(string(from))},
		}},
		{Update: &types.Update{
			TableName:                 aws.String(s.Table),
			Key:                       capacityKey(pool),
			UpdateExpression:          aws.String("SET #c = #c - :one"),
			ConditionExpression:       aws.String("#c > :zero"),
			ExpressionAttributeNames:  map[string]string{"#c": attrCount},
			ExpressionAttributeValues: map[string]types.AttributeValue{":zero": ddb.Num(0), ":one": ddb.Num(1)},
		}},
	}}
	err := ddb.Transact(ctx, s.DB, in, ErrState, errCapacityNegative)
	if errors.Is(err, ErrState) {
		err = s.explain(ctx, pool, launchID, from)
	}
	if err != nil {
		return fmt.Errorf("remove vm %s from pool %s: %w", launchID, pool, err)
	}
	return nil
}

var errCapacityNegative = errors.New("pool capacity would go below zero: its books are inconsistent")

// apply makes a move and returns the new item. A failed condition is
// explained by reading the item.
func (s *Store) apply(ctx context.Context, pool, launchID string, m move) (*VM, error) {
	out, err := s.DB.UpdateItem(ctx, ddb.UpdateItem(s.moveUpdate(pool, launchID, m, s.now())))
	if ddb.IsConditionFailed(err) {
		return nil, s.explain(ctx, pool, launchID, m.from)
	}
	if err != nil {
		return nil, err
	}
	return decodeVM(out.Attributes)
}

// explain tells why a VM was not in state want.
func (s *Store) explain(ctx context.Context, pool, launchID string, want State) error {
	vm, err := s.Get(ctx, pool, launchID)
	if err != nil {
		return err
	}
	return fmt.Errorf("%w: it is %s, not %s", ErrState, vm.State, want)
}

// Get reads a VM item, strongly consistent.
func (s *Store) Get(ctx context.Context, pool, launchID string) (*VM, error) {
	out, err := s.DB.GetItem(ctx, &dynamodb.GetItemInput{
		TableName: aws.String(s.Table), Key: vmKey(pool, launchID), ConsistentRead: aws.Bool(true),
	})
	if err != nil {
		return nil, fmt.Errorf("get vm %s: %w", launchID, err)
	}
	if out.Item == nil {
		return nil, fmt.Errorf("vm %s in pool %s: %w", launchID, pool, ErrNotFound)
	}
	return decodeVM(out.Item)
}

// MarkProvisioning records the instance a launching VM got.
func (s *Store) MarkProvisioning(ctx context.Context, pool, launchID, instanceID, address, instanceType string) (*VM, error) {
	if instanceID == "" {
		return nil, fmt.Errorf("mark vm %s provisioning: instance id is empty", launchID)
	}
	vm, err := s.apply(ctx, pool, launchID, move{
		from: Launching, to: Provisioning,
		Change: ddb.Change{
			Set:    []string{"#iid = :iid", "#addr = :addr", "#type = :type"},
			Names:  map[string]string{"#iid": attrInstanceID, "#addr": attrAddress, "#type": attrInstanceType},
			Values: map[string]types.AttributeValue{":iid": ddb.Str(instanceID), ":addr": ddb.Str(address), ":type": ddb.Str(instanceType)},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("mark vm %s provisioning: %w", launchID, err)
	}
	return vm, nil
}

// MarkIdle puts a provisioning VM whose agent answered into the idle index.
func (s *Store) MarkIdle(ctx context.Context, pool, launchID string) (*VM, error) {
	vm, err := s.apply(ctx, pool, launchID, move{
		from: Provisioning, to: Idle,
		Change: ddb.Change{
			Set:    []string{"#idle = :pool"},
			Names:  map[string]string{"#idle": ddb.AttrIdlePK},
			Values: map[string]types.AttributeValue{":pool": ddb.Str(pool)},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("mark vm %s idle: %w", launchID, err)
	}
	return vm, nil
}

// Retire moves a VM from state from to releasing, so that exactly one caller
// goes on to terminate it (a boot that failed, an idle VM past its lifetime).
func (s *Store) Retire(ctx context.Context, pool, launchID string, from State) (*VM, error) {
	vm, err := s.apply(ctx, pool, launchID, move{
		from: from, to: Releasing,
		Change: ddb.Change{
			Remove: []string{"#idle"},
			Names:  map[string]string{"#idle": ddb.AttrIdlePK},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("retire vm %s: %w", launchID, err)
	}
	return vm, nil
}

// LeaseAny reads idle candidates and tries them in random order until try
// leases one (taken: another lessee had it), reading again when all were
// taken; ErrNoIdle when the index has none. A stage's lease
// (internal/stage/record) tries each candidate with a transaction that
// writes the VM item (LeaseUpdate) and the stage's record at once.
func (s *Store) LeaseAny(ctx context.Context, pool string, try func(launchID string) (vm *VM, taken bool, err error)) (*VM, error) {
	const maxRounds = 50
	for range maxRounds {
		candidates, err := s.idleCandidates(ctx, pool)
		if err != nil {
			return nil, err
		}
		if len(candidates) == 0 {
			return nil, fmt.Errorf("lease in pool %s: %w", pool, ErrNoIdle)
		}
		rand.Shuffle(len(candidates), func(i, j int) { candidates[i], candidates[j] = candidates[j], candidates[i] })
		for _, launchID := range candidates {
			vm, taken, err := try(launchID)
			if err != nil || !taken {
				return vm, err
			}
		}
		// Every candidate was taken meanwhile; the index, eventually
		// consistent, may also still list VMs leased a moment ago.
		if err := clock.Sleep(ctx, time.Duration(rand.IntN(5)+1)*time.Millisecond); err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("lease in pool %s: %w", pool, ErrNoIdle)
}

// idleCandidates reads up to Candidates launch ids from the idle index,
// starting at a random launch id and wrapping around, so that concurrent
// lessees mostly look at different VMs.
func (s *Store) idleCandidates(ctx context.Context, pool string) ([]string, error) {
	limit := s.Candidates
	if limit <= 0 {
		limit = 8
	}
	start := NewLaunchID()
	query := func(after string, limit int32) ([]string, error) {
		in := &dynamodb.QueryInput{
			TableName:                 aws.String(s.Table),
			IndexName:                 aws.String(ddb.IdleIndex),
			KeyConditionExpression:    aws.String("#idle = :pool"),
			ExpressionAttributeNames:  map[string]string{"#idle": ddb.AttrIdlePK},
			ExpressionAttributeValues: map[string]types.AttributeValue{":pool": ddb.Str(pool)},
			Limit:                     aws.Int32(limit),
		}
		if after != "" {
			in.KeyConditionExpression = aws.String("#idle = :pool AND #lid > :after")
			in.ExpressionAttributeNames["#lid"] = ddb.AttrLaunchID
			in.ExpressionAttributeValues[":after"] = ddb.Str(after)
		}
		out, err := s.DB.Query(ctx, in)
		if err != nil {
			return nil, fmt.Errorf("query idle vms of pool %s: %w", pool, err)
		}
		ids := make([]string, 0, len(out.Items))
		for _, item := range out.Items {
			ids = append(ids, ddb.GetString(item, ddb.AttrLaunchID))
		}
		return ids, nil
	}
	ids, err := query(start, limit)
	if err != nil || int32(len(ids)) == limit {
		return ids, err
	}
	more, err := query("", limit-int32(len(ids)))
	if err != nil {
		return nil, err
	}
	for _, id := range more {
		if id > start {
			break // wrapped around to what the first read returned
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// ReleaseExpired releases a lease whose deadline passed, whoever holds it.
// The deadline is checked in the condition, so a lease extended meanwhile
// is left alone.
func (s *Store) ReleaseExpired(ctx context.Context, pool, launchID string) (*VM, error) {
	vm, err := s.apply(ctx, pool, launchID, move{
		from: Leased, to: Releasing,
		Change: ddb.Change{
			Cond:  "#dl < :now",
			Names: map[string]string{"#dl": attrLeaseDeadline},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("release expired lease of vm %s: %w", launchID, err)
	}
	return vm, nil
}

// MarkMissing records that the VM's instance was found gone at t, unless an
// earlier time is recorded: reconcile removes a VM only once its instance
// has been gone for a while, never after one look.
func (s *Store) MarkMissing(ctx context.Context, pool, launchID string, t time.Time) error {
	_, err := s.DB.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName:                 aws.String(s.Table),
		Key:                       vmKey(pool, launchID),
		UpdateExpression:          aws.String("SET #m = if_not_exists(#m, :t)"),
		ConditionExpression:       aws.String("attribute_exists(pk)"),
		ExpressionAttributeNames:  map[string]string{"#m": attrMissingSince},
		ExpressionAttributeValues: map[string]types.AttributeValue{":t": ddb.Millis(t)},
	})
	if ddb.IsConditionFailed(err) {
		return fmt.Errorf("mark vm %s missing: %w", launchID, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("mark vm %s missing: %w", launchID, err)
	}
	return nil
}

// ClearMissing forgets a missing mark: the instance showed up again.
func (s *Store) ClearMissing(ctx context.Context, pool, launchID string) error {
	_, err := s.DB.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName:                aws.String(s.Table),
		Key:                      vmKey(pool, launchID),
		UpdateExpression:         aws.String("REMOVE #m"),
		ConditionExpression:      aws.String("attribute_exists(pk)"),
		ExpressionAttributeNames: map[string]string{"#m": attrMissingSince},
	})
	if err != nil && !ddb.IsConditionFailed(err) {
		return fmt.Errorf("clear missing mark of vm %s: %w", launchID, err)
	}
	return nil
}

// List returns every VM item of the pool, strongly consistent.
func (s *Store) List(ctx context.Context, pool string) ([]VM, error) {
	var vms []VM
	p := dynamodb.NewQueryPaginator(s.DB, &dynamodb.QueryInput{
		TableName:                 aws.String(s.Table),
		KeyConditionExpression:    aws.String("pk = :pk AND begins_with(sk, :vm)"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":pk": ddb.Str(poolPK(pool)), ":vm": ddb.Str("VM#")},
		ConsistentRead:            aws.Bool(true),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("list vms of pool %s: %w", pool, err)
		}
		for _, item := range page.Items {
			vm, err := decodeVM(item)
			if err != nil {
				return nil, err
			}
			vms = append(vms, *vm)
		}
	}
	return vms, nil
}

// Capacity is the pool's count of VMs that exist or are being launched.
func (s *Store) Capacity(ctx context.Context, pool string) (int, error) {
	out, err := s.DB.GetItem(ctx, &dynamodb.GetItemInput{
		TableName: aws.String(s.Table), Key: capacityKey(pool), ConsistentRead: aws.Bool(true),
	})
	if err != nil {
		return 0, fmt.Errorf("read capacity of pool %s: %w", pool, err)
	}
	n, err := ddb.GetInt(out.Item, attrCount)
	return int(n), err
}

// Depth counts a pool's VMs by state.
type Depth struct {
	ByState  map[State]int
	Capacity int
}

// Depth reads the pool's depth.
func (s *Store) Depth(ctx context.Context, pool string) (Depth, error) {
	vms, err := s.List(ctx, pool)
	if err != nil {
		return Depth{}, err
	}
	d := Depth{ByState: map[State]int{}}
	for _, vm := range vms {
		d.ByState[vm.State]++
	}
	d.Capacity, err = s.Capacity(ctx, pool)
	return d, err
}

// String is for logs.
func (d Depth) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "capacity=%d", d.Capacity)
	for _, st := range []State{Launching, Provisioning, Idle, Leased, Releasing} {
		fmt.Fprintf(&b, " %s=%d", st, d.ByState[st])
	}
	return b.String()
}
