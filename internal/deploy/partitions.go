package deploy

import (
	"github.com/slipway-ci/slipway/internal/ddb"
	"github.com/slipway-ci/slipway/statemachine"
)

// Partitions are the partitions of the table each function writes: its
// role's dynamodb:LeadingKeys condition on AWS (infra), and its store's
// ddb.WriteGuard under `slipway local`, so that every local test that
// runs stages shows the condition lets each function do what it does.
// Every function may write the CA certificate: the first to start stores
// it.
var Partitions = map[string][]string{
	statemachine.API: {ddb.StagePartitions, ddb.IndexPartitions, ddb.OwnerPartitions, ddb.PoolPartitions,
		ddb.DeploymentPartition},
	statemachine.Init:     {ddb.StagePartitions, ddb.PoolPartitions, ddb.DeploymentPartition},
	statemachine.RunGroup: {ddb.StagePartitions, ddb.DeploymentPartition},
	statemachine.Cleanup:  {ddb.StagePartitions, ddb.OwnerPartitions, ddb.PoolPartitions, ddb.DeploymentPartition},
	statemachine.Refill:   {ddb.PoolPartitions, ddb.DeploymentPartition},
}
