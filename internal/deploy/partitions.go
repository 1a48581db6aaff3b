package deploy

import (
	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/statemachine"
)

// Partitions are the partitions of the table each function writes: its
// role's dynamodb:LeadingKeys condition on AWS (infra), and its store's
// lease.WriteGuard under `slipway local`, so that every local test that
// runs stages shows the condition lets each function do what it does.
// Every function may write the CA certificate: the first to start stores
// it.
var Partitions = map[string][]string{
	statemachine.API: {lease.StagePartitions, lease.IndexPartitions, lease.OwnerPartitions, lease.PoolPartitions,
		lease.DeploymentPartition},
	statemachine.Init:    {lease.StagePartitions, lease.PoolPartitions, lease.DeploymentPartition},
	statemachine.Step:    {lease.StagePartitions, lease.DeploymentPartition},
	statemachine.Cleanup: {lease.StagePartitions, lease.OwnerPartitions, lease.PoolPartitions, lease.DeploymentPartition},
	statemachine.Refill:  {lease.PoolPartitions, lease.DeploymentPartition},
}
