package lease

import (
	"fmt"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// Item layout. Keys: pk = POOL#<pool>; sk = VM#<launch id> for a VM and
// CAPACITY for the pool's count of VMs that exist or are being launched.
const (
	attrPK            = "pk"
	attrSK            = "sk"
	attrPool          = "pool"
	attrLaunchID      = "launch_id"
	attrState         = "vm_state"
	attrInstanceID    = "instance_id"
	attrAddress       = "address"
	attrInstanceType  = "instance_type"
	attrStage         = "lease_stage"
	attrLeaseDeadline = "lease_deadline"
	attrCreatedAt     = "created_at"
	attrStateAt       = "state_at"
	attrVersion       = "version"
	attrMissingSince  = "missing_since"
	// attrIdlePK is present only while the VM is idle: the idle index is sparse.
	attrIdlePK = "idle_pk"
	attrCount  = "vm_count"

	// IdleIndex lists idle VMs per pool.
	IdleIndex = "idle"

	capacitySK = "CAPACITY"
)

func poolPK(pool string) string         { return "POOL#" + pool }
func vmSK(launchID string) string       { return "VM#" + launchID }
func str(v string) types.AttributeValue { return &types.AttributeValueMemberS{Value: v} }
func num(v int64) types.AttributeValue {
	return &types.AttributeValueMemberN{Value: strconv.FormatInt(v, 10)}
}
func millis(t time.Time) types.AttributeValue {
	return num(t.UnixMilli())
}

func vmKey(pool, launchID string) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{attrPK: str(poolPK(pool)), attrSK: str(vmSK(launchID))}
}

func capacityKey(pool string) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{attrPK: str(poolPK(pool)), attrSK: str(capacitySK)}
}

func getString(item map[string]types.AttributeValue, name string) string {
	if v, ok := item[name].(*types.AttributeValueMemberS); ok {
		return v.Value
	}
	return ""
}

func getBytes(item map[string]types.AttributeValue, name string) []byte {
	if v, ok := item[name].(*types.AttributeValueMemberB); ok {
		return v.Value
	}
	return nil
}

// setBytes sets a binary attribute; DynamoDB refuses empty ones, so an empty
// value leaves it out.
func setBytes(item map[string]types.AttributeValue, name string, v []byte) {
	if len(v) > 0 {
		item[name] = &types.AttributeValueMemberB{Value: v}
	}
}

func getBool(item map[string]types.AttributeValue, name string) bool {
	v, ok := item[name].(*types.AttributeValueMemberBOOL)
	return ok && v.Value
}

func getInt(item map[string]types.AttributeValue, name string) (int64, error) {
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

func getTime(item map[string]types.AttributeValue, name string) (time.Time, error) {
	ms, err := getInt(item, name)
	if err != nil || ms == 0 {
		return time.Time{}, err
	}
	return time.UnixMilli(ms).UTC(), nil
}

// decodeVM reads a VM item.
func decodeVM(item map[string]types.AttributeValue) (*VM, error) {
	vm := &VM{
		Pool:         getString(item, attrPool),
		LaunchID:     getString(item, attrLaunchID),
		State:        State(getString(item, attrState)),
		InstanceID:   getString(item, attrInstanceID),
		Address:      getString(item, attrAddress),
		InstanceType: getString(item, attrInstanceType),
		Stage:        getString(item, attrStage),
	}
	var err error
	if vm.LeaseDeadline, err = getTime(item, attrLeaseDeadline); err != nil {
		return nil, err
	}
	if vm.CreatedAt, err = getTime(item, attrCreatedAt); err != nil {
		return nil, err
	}
	if vm.StateAt, err = getTime(item, attrStateAt); err != nil {
		return nil, err
	}
	if vm.MissingSince, err = getTime(item, attrMissingSince); err != nil {
		return nil, err
	}
	if vm.Version, err = getInt(item, attrVersion); err != nil {
		return nil, err
	}
	if vm.LaunchID == "" || vm.State == "" {
		return nil, fmt.Errorf("vm item %s/%s lacks its launch id or state", getString(item, attrPK), getString(item, attrSK))
	}
	return vm, nil
}
