package record_test

import (
	"errors"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/internal/ddb"
	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/internal/stage/record"
)

// The guard refuses a write outside its partitions, a transaction with one
// such item whole, as IAM's dynamodb:LeadingKeys does; reads pass.
func TestWriteGuard(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	guarded := &ddb.WriteGuard{DB: s.stageRecords.DB, Function: "rungroup", Partitions: []string{ddb.StagePartitions}}
	stages := &books{&record.Store{DB: guarded, Table: s.stageRecords.Table}, &lease.Store{DB: guarded, Table: s.vmItems.Table}}
	deadline := time.Now().Add(time.Hour)
	// A create writes the index too: not the step function's.
	_, err := stages.CreateStage(ctx, newStage("g1", deadline))
	var refused *ddb.PartitionError
	if !errors.As(err, &refused) || refused.Function != "rungroup" || refused.Key[:7] != "STAGES#" {
		t.Fatalf("a create through the step function's guard: %v", err)
	}
	if _, err := s.GetStage(ctx, "g1"); !errors.Is(err, record.ErrStageNotFound) {
		t.Fatalf("the refused transaction wrote: %v", err)
	}
	if _, err := s.CreateStage(ctx, newStage("g1", deadline)); err != nil {
		t.Fatal(err)
	}
	// Its own partition it writes; what it reads is not guarded.
	if _, err := stages.EndStage(ctx, "g1", "failed", "why"); err != nil {
		t.Errorf("a write of its own partition: %v", err)
	}
	if _, err := stages.Depth(ctx, "p"); err != nil {
		t.Errorf("a read of another partition: %v", err)
	}
	// A pool's VM is not a stage's.
	addIdle(t, s, "p", 1, 2)
	if _, err := stages.RecordLaunch(ctx, lease.Launch{Pool: "p", LaunchID: lease.NewLaunchID(), Max: 2}); !errors.As(err, &refused) {
		t.Errorf("a launch through the step function's guard: %v", err)
	}
}
