package warm

import (
	"context"
	"errors"
)

// Request is what the refill function is invoked with. The schedule's
// events name no pool and mean every pass over every pool; a release names
// its pool, to be refilled at once.
type Request struct {
	Pool string `json:"pool,omitempty"`
}

// Report is what one invocation did.
type Report struct {
	Refill    []RefillReport   `json:"-"`
	Reap      []ReapReport     `json:"-"`
	Reconcile *ReconcileReport `json:"-"`
	// Launched and Idle sum the refill's reports, for the function's answer.
	Launched int `json:"launched"`
	Idle     int `json:"idle"`
}

// Handle is the refill function: refill, reap and reconcile every pool, or
// refill just the pool a release named. A pool's failure does not stop the
// other passes; their errors are joined.
func (k *Keeper) Handle(ctx context.Context, req Request) (Report, error) {
	var r Report
	if req.Pool != "" {
		p, err := k.lookup(req.Pool)
		if err != nil {
			return r, err
		}
		rr, err := k.RefillPool(ctx, p)
		r.Refill = []RefillReport{rr}
		r.sum()
		return r, err
	}
	var errs []error
	var err error
	r.Refill, err = k.Refill(ctx)
	errs = append(errs, err)
	r.Reap, err = k.Reap(ctx)
	errs = append(errs, err)
	rec, err := k.Reconcile(ctx)
	r.Reconcile = &rec
	errs = append(errs, err)
	r.sum()
	return r, errors.Join(errs...)
}

func (r *Report) sum() {
	for _, rr := range r.Refill {
		r.Launched += rr.Launched
		r.Idle += rr.Idle
	}
}
