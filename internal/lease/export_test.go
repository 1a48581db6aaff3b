package lease

import (
	"context"
	"time"
)

// TryLease is the single conditional write of a lease, for the benchmark's
// uncontended baseline.
func (s *Store) TryLease(ctx context.Context, pool, launchID, stageID string, deadline time.Time) (*VM, error) {
	return s.tryLease(ctx, pool, launchID, stageID, deadline)
}

// ItemBytes is an item's size as the store counts it.
var ItemBytes = itemBytes
