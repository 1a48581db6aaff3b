// Package leasetest puts VMs in a lease store's books for tests of what
// leases them, without a fleet or a refill.
package leasetest

import (
	"context"

	"github.com/slipway-ci/slipway/internal/lease"
)

// AddIdle records n VMs in pool (whose max is max), each with an instance
// id and an address that answers nothing, and brings them to idle.
func AddIdle(ctx context.Context, s *lease.Store, pool string, n, max int) error {
	for range n {
		id := lease.NewLaunchID()
		if _, err := s.RecordLaunch(ctx, lease.Launch{Pool: pool, LaunchID: id, Max: max}); err != nil {
			return err
		}
		if _, err := s.MarkProvisioning(ctx, pool, id, "i-"+id[3:], "127.0.0.1:1", "t3.small"); err != nil {
			return err
		}
		if _, err := s.MarkIdle(ctx, pool, id); err != nil {
			return err
		}
	}
	return nil
}
