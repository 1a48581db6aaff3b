package record_test

import (
	"context"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/internal/awstest"
	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/internal/lease/leasetest"
	"github.com/slipway-ci/slipway/internal/stage/record"
)

// The two stores of one table, as the tests use them together: a stage's
// records and its pool's VMs.
type (
	stageRecords = record.Store
	vmItems      = lease.Store
	books        struct {
		*stageRecords
		*vmItems
	}
)

func newStore(t testing.TB) *books {
	t.Helper()
	db, table := awstest.Table(t)
	return &books{&record.Store{DB: db, Table: table}, &lease.Store{DB: db, Table: table}}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// addIdle records n VMs in pool and brings them to idle.
func addIdle(t testing.TB, s *books, pool string, n, max int) {
	t.Helper()
	ctx := ctxT(t)
	if err := leasetest.AddIdle(ctx, s.vmItems, pool, n, max); err != nil {
		t.Fatal(err)
	}
}
