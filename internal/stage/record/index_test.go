package record_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/internal/awstest"
	"github.com/slipway-ci/slipway/internal/stage/record"
)

// TestListStages: stages list newest first across hour partitions, by pool,
// since a time, at most a limit.
func TestListStages(t *testing.T) {
	db, table := awstest.Table(t)
	ctx := context.Background()
	clock := time.Date(2026, 12, 3, 10, 50, 0, 0, time.UTC)
	store := &record.Store{DB: db, Table: table, Now: func() time.Time { return clock }}
	// Seven stages 15 minutes apart: they span three hours.
	for i := range 7 {
		pool := "a"
		if i%2 == 1 {
			pool = "b"
		}
		owner := "team-x"
		if i%3 == 0 {
			owner = "team-y"
		}
		if _, err := store.CreateStage(ctx, record.NewStage{ID: fmt.Sprintf("s%d", i), Pool: pool, Owner: owner, Deadline: clock.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		clock = clock.Add(15 * time.Minute)
	}
	ids := func(refs []record.StageRef) string {
		s := ""
		for _, r := range refs {
			s += r.ID + " "
		}
		return s
	}
	for _, tt := range []struct {
		since  time.Duration
		filter record.StageFilter
		limit  int
		want   string
	}{
		{3 * time.Hour, record.StageFilter{}, 100, "s6 s5 s4 s3 s2 s1 s0 "},
		{3 * time.Hour, record.StageFilter{}, 3, "s6 s5 s4 "},
		{3 * time.Hour, record.StageFilter{Pool: "b"}, 100, "s5 s3 s1 "},
		{3 * time.Hour, record.StageFilter{Owner: "team-y"}, 100, "s6 s3 s0 "},
		{3 * time.Hour, record.StageFilter{Owner: "team-x", Pool: "a"}, 100, "s4 s2 "},
		{3 * time.Hour, record.StageFilter{Owner: "team-z"}, 100, ""},
		{40 * time.Minute, record.StageFilter{}, 100, "s6 s5 "},
	} {
		refs, err := store.ListStages(ctx, clock.Add(-tt.since), tt.filter, tt.limit)
		if err != nil {
			t.Fatal(err)
		}
		if got := ids(refs); got != tt.want {
			t.Errorf("since %s, %+v, limit %d: %s, want %s", tt.since, tt.filter, tt.limit, got, tt.want)
		}
	}
}
