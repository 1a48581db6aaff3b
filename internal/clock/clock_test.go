package clock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/internal/clock"
)

func TestSleep(t *testing.T) {
	if err := clock.Sleep(context.Background(), time.Millisecond); err != nil {
		t.Fatalf("a whole sleep: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if err := clock.Sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("a canceled sleep: %v", err)
	}
	if time.Since(start) > time.Second {
		t.Fatal("a canceled sleep waited")
	}
}
