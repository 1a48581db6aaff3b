package record

import (
	"context"
	"fmt"
	"time"

	"github.com/slipway-ci/slipway/internal/lease"
)

// TryLeaseForStage is one attempt of the stage's lease on one VM (its
// transaction and the read of the VM), for the benchmark's uncontended
// baseline.
func (s *Store) TryLeaseForStage(ctx context.Context, st *Stage, launchID string, leaseDeadline time.Time) (*lease.VM, error) {
	vm, taken, _, err := s.tryLeaseForStage(ctx, st, launchID, leaseDeadline)
	if taken {
		return nil, fmt.Errorf("vm %s was taken", launchID)
	}
	return vm, err
}

// ItemBytes is an item's size as the store counts it.
var ItemBytes = itemBytes
