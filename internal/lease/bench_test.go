package lease_test

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

	"github.com/slipway-ci/slipway/internal/lease"
)

// Run with -benchtime 1x: the benchmark measures itself and prints BENCH lines.
const (
	benchWorkers  = 50
	benchPoolSize = 200
	benchDuration = 10 * time.Second
)

// BenchmarkLeaseAcquire: 50 goroutines lease and return VMs of one pool of
// 200 for 10 s, against the same 50 doing the raw work without contention,
// each on a pool of its own: one idle-index query and the lease's
// conditional UpdateItem, then the same Return. After a warm-up (DynamoDB
// Local runs on a JVM), the two alternate in halves of 5 s so that both see
// the same machine.
func BenchmarkLeaseAcquire(b *testing.B) {
	s := newStore(b)
	addIdle(b, s, "shared", benchPoolSize, benchPoolSize)
	for w := range benchWorkers {
		addIdle(b, s, fmt.Sprintf("own-%d", w), benchPoolSize/benchWorkers, benchPoolSize)
	}
	counting := &countingDB{DB: s.DB}
	s.DB = counting
	leased := make([]string, benchWorkers) // each worker's current vm

	// Contended: the store's Lease and Return on the shared pool.
	var mu sync.Mutex
	holder := map[string]string{}
	doubles := 0
	contendedAcquire := func(ctx context.Context, w, i int) error {
		stage := fmt.Sprintf("w%d-%d", w, i)
		vm, err := s.Lease(ctx, "shared", stage, time.Now().Add(time.Hour))
		if err != nil {
			return err
		}
		mu.Lock()
		if _, taken := holder[vm.LaunchID]; taken {
			doubles++
		}
		holder[vm.LaunchID] = stage
		mu.Unlock()
		leased[w] = vm.LaunchID
		return nil
	}
	contendedRelease := func(ctx context.Context, w, i int) error {
		mu.Lock()
		delete(holder, leased[w])
		mu.Unlock()
		_, err := s.Return(ctx, "shared", leased[w], fmt.Sprintf("w%d-%d", w, i))
		return err
	}

	// Raw: the same calls by hand, each worker on its own pool.
	rawAcquire := func(ctx context.Context, w, _ int) error {
		pool := fmt.Sprintf("own-%d", w)
		out, err := s.DB.Query(ctx, &dynamodb.QueryInput{
			TableName: aws.String(s.Table), IndexName: aws.String(lease.IdleIndex),
			KeyConditionExpression:    aws.String("idle_pk = :p"),
			ExpressionAttributeValues: map[string]types.AttributeValue{":p": &types.AttributeValueMemberS{Value: pool}},
			Limit:                     aws.Int32(8),
		})
		if err != nil {
			return fmt.Errorf("raw query: %w", err)
		}
		if len(out.Items) == 0 {
			return fmt.Errorf("raw query: pool %s has no idle vm", pool)
		}
		leased[w] = out.Items[0]["launch_id"].(*types.AttributeValueMemberS).Value
		_, err = s.TryLease(ctx, pool, leased[w], fmt.Sprintf("raw-%d", w), time.Now().Add(time.Hour))
		return err
	}
	rawRelease := func(ctx context.Context, w, _ int) error {
		_, err := s.Return(ctx, fmt.Sprintf("own-%d", w), leased[w], fmt.Sprintf("raw-%d", w))
		return err
	}

	run(b, 3*time.Second, rawAcquire, rawRelease) // warm-up
	var latencies []time.Duration
	var leases, rawLeases int
	var calls int64
	for range 2 {
		before := counting.calls.Load()
		l, n := run(b, benchDuration/2, contendedAcquire, contendedRelease)
		calls += counting.calls.Load() - before
		latencies, leases = append(latencies, l...), leases+n
		_, n = run(b, benchDuration/2, rawAcquire, rawRelease)
		rawLeases += n
	}

	slices.Sort(latencies)
	pct := func(p float64) float64 {
		return float64(latencies[int(p*float64(len(latencies)-1))]) / float64(time.Millisecond)
	}
	fmt.Printf("BENCH lease_double_leases %d count leases=%d\n", doubles, leases)
	fmt.Printf("BENCH lease_acquire_ratio_to_raw %.3f x leases_per_s=%.0f raw_per_s=%.0f calls_per_cycle=%.2f raw_calls_per_cycle=3 workers=%d pool=%d\n",
		float64(leases)/float64(rawLeases), float64(leases)/benchDuration.Seconds(), float64(rawLeases)/benchDuration.Seconds(),
		float64(calls)/float64(leases), benchWorkers, benchPoolSize)
	fmt.Printf("BENCH lease_acquire_p50 %.2f ms\n", pct(0.50))
	fmt.Printf("BENCH lease_acquire_p99 %.2f ms\n", pct(0.99))
}

// run has benchWorkers goroutines call acquire then release in a loop for
// d; it returns the acquire latencies and the acquire count.
func run(b *testing.B, d time.Duration, acquire, release func(ctx context.Context, w, i int) error) ([]time.Duration, int) {
	ctx := context.Background()
	stop := time.Now().Add(d)
	var mu sync.Mutex
	var all []time.Duration
	var wg sync.WaitGroup
	for w := range benchWorkers {
		wg.Go(func() {
			var mine []time.Duration
			for i := 0; time.Now().Before(stop); i++ {
				start := time.Now()
				if err := acquire(ctx, w, i); err != nil {
					b.Error(err)
					return
				}
				mine = append(mine, time.Since(start))
				if err := release(ctx, w, i); err != nil {
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
	return all, len(all)
}

// countingDB counts the calls the contended cycle makes, to tell contention
// (retried writes, re-read candidates) from the cost of the calls.
type countingDB struct {
	lease.DB
	calls atomic.Int64
}

func (c *countingDB) Query(ctx context.Context, in *dynamodb.QueryInput, opts ...func(*dynamodb.Options)) (*dynamodb.QueryOutput, error) {
	c.calls.Add(1)
	return c.DB.Query(ctx, in, opts...)
}

func (c *countingDB) UpdateItem(ctx context.Context, in *dynamodb.UpdateItemInput, opts ...func(*dynamodb.Options)) (*dynamodb.UpdateItemOutput, error) {
	c.calls.Add(1)
	return c.DB.UpdateItem(ctx, in, opts...)
}
