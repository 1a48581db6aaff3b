package record_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/slipway-ci/slipway/internal/ddb"
	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/internal/lease/leasetest"
	"github.com/slipway-ci/slipway/internal/stage/record"
)

// Run with -benchtime 1x: the benchmark measures itself and prints BENCH lines.
const (
	benchWorkers  = 50
	benchPoolSize = 200
	benchDuration = 10 * time.Second
)

// BenchmarkLeaseAcquire measures the lease production runs: a stage's
// LeaseForStage (the idle index read, then one transaction on the VM item
// and the stage record). 50 workers each create a stage, lease it a VM of
// one shared pool of 200, then end it as cleanup does (ReleaseStage, the
// VM removed, a new idle VM in its place, as refill would), for 10 s. The
// same 50 do the raw work without contention, each on a pool of its own:
// one idle-index query and one attempt of the transaction. After a warm-up
// (DynamoDB Local runs on a JVM), the two alternate in halves of 5 s so
// that both see the same machine. Only the lease is timed; the ratio
// compares the mean lease times.
func BenchmarkLeaseAcquire(b *testing.B) {
	s := newStore(b)
	addIdle(b, s, "shared", benchPoolSize, 2*benchPoolSize)
	for w := range benchWorkers {
		addIdle(b, s, fmt.Sprintf("own-%d", w), benchPoolSize/benchWorkers, benchPoolSize)
	}
	counting := &countingDB{DB: s.stageRecords.DB}
	s.stageRecords.DB = counting
	stages := make([]*record.Stage, benchWorkers) // each worker's next stage

	var mu sync.Mutex
	holder := map[string]string{}
	doubles := 0
	contendedLease := func(ctx context.Context, w int) error {
		st := stages[w]
		vm, _, err := s.LeaseForStage(counted(ctx), st, time.Now().Add(time.Hour))
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		if _, taken := holder[vm.LaunchID]; taken {
			doubles++
		}
		holder[vm.LaunchID] = st.ID
		return nil
	}
	rawLease := func(ctx context.Context, w int) error {
		st := stages[w]
		out, err := s.vmItems.DB.Query(ctx, &dynamodb.QueryInput{
			TableName: aws.String(s.vmItems.Table), IndexName: aws.String(ddb.IdleIndex),
			KeyConditionExpression:    aws.String("idle_pk = :p"),
			ExpressionAttributeValues: map[string]types.AttributeValue{":p": &types.AttributeValueMemberS{Value: st.Pool}},
			Limit:                     aws.Int32(8),
		})
		if err != nil {
			return fmt.Errorf("raw query: %w", err)
		}
		if len(out.Items) == 0 {
			return fmt.Errorf("raw query: pool %s has no idle vm", st.Pool)
		}
		launchID := out.Items[0]["launch_id"].(*types.AttributeValueMemberS).Value
		_, err = s.TryLeaseForStage(ctx, st, launchID, time.Now().Add(time.Hour))
		return err
	}
	// newStage creates the worker's next stage in pool.
	var made atomic.Int64
	newStage := func(ctx context.Context, w int, pool string) error {
		st, err := s.CreateStage(ctx, record.NewStage{
			ID: fmt.Sprintf("stage-%d", made.Add(1)), Pool: pool, SpecHash: "h", Spec: []byte(`{}`),
			Deadline: time.Now().Add(time.Hour),
		})
		stages[w] = st
		return err
	}
	// end releases the worker's stage and puts a new idle VM in its VM's place.
	end := func(ctx context.Context, w int) error {
		st := stages[w]
		vm, err := s.ReleaseStage(ctx, st.ID, "passed", "")
		if err != nil {
			return err
		}
		mu.Lock()
		delete(holder, vm.LaunchID)
		mu.Unlock()
		if err := s.Remove(ctx, st.Pool, vm.LaunchID, lease.Releasing); err != nil {
			return err
		}
		return leasetest.AddIdle(ctx, s.vmItems, st.Pool, 1, 2*benchPoolSize)
	}
	contended := cycle{
		prepare: func(ctx context.Context, w int) error { return newStage(ctx, w, "shared") },
		lease:   contendedLease, end: end,
	}
	raw := cycle{
		prepare: func(ctx context.Context, w int) error { return newStage(ctx, w, fmt.Sprintf("own-%d", w)) },
		lease:   rawLease, end: end,
	}

	run(b, 3*time.Second, raw) // warm-up
	var latencies, rawLatencies []time.Duration
	for range 2 {
		latencies = append(latencies, run(b, benchDuration/2, contended)...)
		rawLatencies = append(rawLatencies, run(b, benchDuration/2, raw)...)
	}

	slices.Sort(latencies)
	pct := func(p float64) float64 {
		return float64(latencies[int(p*float64(len(latencies)-1))]) / float64(time.Millisecond)
	}
	mean := func(ds []time.Duration) time.Duration {
		var sum time.Duration
		for _, d := range ds {
			sum += d
		}
		return sum / time.Duration(len(ds))
	}
	leases := len(latencies)
	fmt.Printf("BENCH lease_double_leases %d count leases=%d\n", doubles, leases)
	fmt.Printf("BENCH lease_acquire_ratio_to_raw %.3f x mean_ms=%.2f raw_mean_ms=%.2f calls_per_lease=%.2f raw_calls_per_lease=3 leases=%d raw_leases=%d workers=%d pool=%d\n",
		float64(mean(rawLatencies))/float64(mean(latencies)),
		float64(mean(latencies))/float64(time.Millisecond), float64(mean(rawLatencies))/float64(time.Millisecond),
		float64(counting.calls.Load())/float64(leases), leases, len(rawLatencies), benchWorkers, benchPoolSize)
	fmt.Printf("BENCH lease_acquire_p50 %.2f ms\n", pct(0.50))
	fmt.Printf("BENCH lease_acquire_p99 %.2f ms\n", pct(0.99))
}

// cycle is one worker's round: prepare a stage (untimed), lease it a VM
// (timed), end it (untimed).
type cycle struct {
	prepare func(ctx context.Context, w int) error
	lease   func(ctx context.Context, w int) error
	end     func(ctx context.Context, w int) error
}

// run has benchWorkers goroutines go round c for d; it returns the lease
// latencies.
func run(b *testing.B, d time.Duration, c cycle) []time.Duration {
	ctx := context.Background()
	stop := time.Now().Add(d)
	var mu sync.Mutex
	var all []time.Duration
	var wg sync.WaitGroup
	for w := range benchWorkers {
		wg.Go(func() {
			var mine []time.Duration
			for time.Now().Before(stop) {
				if err := c.prepare(ctx, w); err != nil {
					b.Error(err)
					return
				}
				start := time.Now()
				if err := c.lease(ctx, w); err != nil {
					b.Error(err)
					return
				}
				mine = append(mine, time.Since(start))
				if err := c.end(ctx, w); err != nil {
					b.Error(err)
					return
				}
			}
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
	return all
}

type countedKey struct{}

// counted marks the calls of a contended lease, which countingDB counts: to
// tell contention (retried transactions, re-read candidates) from the cost
// of the calls.
func counted(ctx context.Context) context.Context { return context.WithValue(ctx, countedKey{}, true) }

type countingDB struct {
	ddb.DB
	calls atomic.Int64
}

func (c *countingDB) count(ctx context.Context) {
	if ctx.Value(countedKey{}) != nil {
		c.calls.Add(1)
	}
}

func (c *countingDB) Query(ctx context.Context, in *dynamodb.QueryInput, opts ...func(*dynamodb.Options)) (*dynamodb.QueryOutput, error) {
	c.count(ctx)
	return c.DB.Query(ctx, in, opts...)
}

func (c *countingDB) GetItem(ctx context.Context, in *dynamodb.GetItemInput, opts ...func(*dynamodb.Options)) (*dynamodb.GetItemOutput, error) {
	c.count(ctx)
	return c.DB.GetItem(ctx, in, opts...)
}

func (c *countingDB) TransactWriteItems(ctx context.Context, in *dynamodb.TransactWriteItemsInput, opts ...func(*dynamodb.Options)) (*dynamodb.TransactWriteItemsOutput, error) {
	c.count(ctx)
	return c.DB.TransactWriteItems(ctx, in, opts...)
}
