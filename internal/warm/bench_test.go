package warm_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/internal/lease"
)

// BenchmarkRefill100: one refill of an empty pool to 100 VMs through the
// fake EC2, which answers each RunInstances after 300 ms, until all 100
// items are recorded launched. Run with -benchtime 1x.
func BenchmarkRefill100(b *testing.B) {
	e := newEnv(b, testPool("big", 100, 100))
	e.fake.RunDelay = 300 * time.Millisecond
	e.keeper.Concurrency = 32
	ctx := context.Background()
	start := time.Now()
	r, err := e.keeper.Refill(ctx)
	took := time.Since(start)
	if err != nil {
		b.Fatal(err)
	}
	vms, err := e.store.List(ctx, "big")
	if err != nil {
		b.Fatal(err)
	}
	launched := 0
	for _, vm := range vms {
		if vm.State == lease.Provisioning {
			launched++
		}
	}
	if launched != 100 || r[0].Launched != 100 {
		b.Fatalf("%d recorded launched, refill says %d", launched, r[0].Launched)
	}
	fmt.Printf("BENCH refill_100_seconds %.2f s run_instances_ms=300 concurrency=%d\n", took.Seconds(), e.keeper.Concurrency)
}
