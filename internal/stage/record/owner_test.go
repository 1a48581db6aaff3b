package record_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/internal/stage/record"
)

// An owner never has more active stages than its limit, however many
// creates race; a release gives its place back, once; a retried create is
// not refused; another owner's count is its own.
func TestOwnerLimit(t *testing.T) {
	s := newStore(t)
	ctx := ctxT(t)
	deadline := time.Now().Add(time.Hour)
	owned := func(id, owner string) record.NewStage {
		ns := newStage(id, deadline)
		ns.Owner, ns.OwnerLimit = owner, 3
		return ns
	}
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Go(func() { _, errs[i] = s.CreateStage(ctx, owned(fmt.Sprint("race-", i), "team-a")) })
	}
	wg.Wait()
	created, refused := 0, 0
	for _, err := range errs {
		var limit *record.OwnerLimitError
		switch {
		case err == nil:
			created++
		case errors.As(err, &limit) && errors.Is(err, record.ErrOwnerLimit):
			refused++
			if limit.Owner != "team-a" || limit.Most != 3 || limit.Active != 3 {
				t.Errorf("refusal %+v", limit)
			}
		default:
			t.Fatalf("create: %v", err)
		}
	}
	if created != 3 || refused != 5 {
		t.Fatalf("%d created, %d refused: want 3 and 5", created, refused)
	}
	if n, err := s.ActiveStages(ctx, "team-a"); err != nil || n != 3 {
		t.Fatalf("active %d %v", n, err)
	}
	var first string
	for i, err := range errs {
		if err == nil {
			first = fmt.Sprint("race-", i)
			break
		}
	}
	// A retried create of a counted stage is that stage, not a refusal.
	if _, err := s.CreateStage(ctx, owned(first, "team-a")); !errors.Is(err, record.ErrStageExists) {
		t.Errorf("a retried create at the limit: %v", err)
	}
	// Another owner is not held back by team-a.
	if _, err := s.CreateStage(ctx, owned("b-1", "team-b")); err != nil {
		t.Errorf("team-b: %v", err)
	}
	// A release frees a place, once.
	if _, err := s.ReleaseStage(ctx, first, "succeeded", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReleaseStage(ctx, first, "succeeded", ""); !errors.Is(err, lease.ErrReleased) {
		t.Fatalf("second release: %v", err)
	}
	if n, _ := s.ActiveStages(ctx, "team-a"); n != 2 {
		t.Fatalf("after a release: %d active", n)
	}
	if _, err := s.CreateStage(ctx, owned("after", "team-a")); err != nil {
		t.Errorf("a create after a release: %v", err)
	}
	// Stages without a limit are not counted, and their release leaves the
	// count alone.
	free := newStage("free", deadline)
	free.Owner = "team-a"
	if _, err := s.CreateStage(ctx, free); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReleaseStage(ctx, "free", "succeeded", ""); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.ActiveStages(ctx, "team-a"); n != 3 {
		t.Errorf("after an uncounted stage: %d active, want 3", n)
	}
}
