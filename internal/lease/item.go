package lease

import (
	"fmt"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/slipway-ci/slipway/internal/ddb"
)

// Item layout. Keys: pk = POOL#<pool>; sk = VM#<launch id> for a VM and
// CAPACITY for the pool's count of VMs that exist or are being launched.
const (
	attrPool          = "pool"
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
	attrCount         = "vm_count"

	capacitySK = "CAPACITY"
)

func poolPK(pool string) string   { return ddb.PoolPartitions + pool }
func vmSK(launchID string) string { return "VM#" + launchID }

func vmKey(pool, launchID string) map[string]types.AttributeValue {
	return ddb.Key(poolPK(pool), vmSK(launchID))
}

func capacityKey(pool string) map[string]types.AttributeValue {
	return ddb.Key(poolPK(pool), capacitySK)
}

// decodeVM reads a VM item.
func decodeVM(item map[string]types.AttributeValue) (*VM, error) {
	vm := &VM{
		Pool:         ddb.GetString(item, attrPool),
		LaunchID:     ddb.GetString(item, ddb.AttrLaunchID),
		State:        State(ddb.GetString(item, attrState)),
		InstanceID:   ddb.GetString(item, attrInstanceID),
		Address:      ddb.GetString(item, attrAddress),
		InstanceType: ddb.GetString(item, attrInstanceType),
		Stage:        ddb.GetString(item, attrStage),
	}
	var err error
	if vm.LeaseDeadline, err = ddb.GetTime(item, attrLeaseDeadline); err != nil {
		return nil, err
	}
	if vm.CreatedAt, err = ddb.GetTime(item, attrCreatedAt); err != nil {
		return nil, err
	}
	if vm.StateAt, err = ddb.GetTime(item, attrStateAt); err != nil {
		return nil, err
	}
	if vm.MissingSince, err = ddb.GetTime(item, attrMissingSince); err != nil {
		return nil, err
	}
	if vm.Version, err = ddb.GetInt(item, attrVersion); err != nil {
		return nil, err
	}
	if vm.LaunchID == "" || vm.State == "" {
		return nil, fmt.Errorf("vm item %s/%s lacks its launch id or state", ddb.GetString(item, ddb.AttrPK), ddb.GetString(item, ddb.AttrSK))
	}
	return vm, nil
}
