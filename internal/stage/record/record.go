// Package record stores stages in the deployment's table: a stage's record
// (its settings, sealed secrets, VM, result), its groups, its steps'
// results, the index that lists stages by hour and owner, and each owner's
// count of active stages. The transactions that span a stage and its VM
// (lease, drop, release) are in lease.go, and write the VM's item through
// internal/lease, which owns it.
package record

import (
	"time"

	"github.com/slipway-ci/slipway/internal/ddb"
	"github.com/slipway-ci/slipway/internal/lease"
)

// Store is the stage records of one table.
type Store struct {
	DB    ddb.DB
	Table string
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (s *Store) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// vms is the VM items of the same table, for the transactions that span a
// stage and its VM.
func (s *Store) vms() *lease.Store {
	return &lease.Store{DB: s.DB, Table: s.Table, Now: s.Now}
}
