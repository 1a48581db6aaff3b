// Package clock holds the one wait every retry loop of Slipway shares.
package clock

import (
	"context"
	"time"
)

// Sleep waits for d, or until ctx ends (then its error): a retry loop's
// pause that a cancel or a deadline cuts short.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
