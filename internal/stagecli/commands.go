package stagecli

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/slipway-ci/slipway/internal/stage"
)

// Status prints a stage's status.
func Status(ctx context.Context, e *Env, id string) (int, error) {
	st, err := e.API.Status(ctx, id, -1, 0)
	if err != nil {
		return ExitError, err
	}
	if e.JSON {
		return ExitSucceeded, e.printJSON(st)
	}
	fmt.Fprintf(e.Out, "stage %s on pool %s: %s\n", st.ID, st.Pool, st.Phase)
	if st.Phase == stage.PhaseReleased {
		e.summary(st)
		return ExitSucceeded, nil
	}
	for _, g := range st.Groups {
		for _, s := range g.Steps {
			fmt.Fprintf(e.Out, "  %-20s %s\n", s.ID, describeStep(&s))
		}
	}
	return ExitSucceeded, nil
}

// Logs prints a step's log; with follow, until the step has ended.
func Logs(ctx context.Context, e *Env, id, step string, follow bool) (int, error) {
	var offset int64
	for {
		wait := time.Duration(0)
		if follow {
			wait = stage.MaxWait
		}
		chunk, err := e.API.Logs(ctx, id, step, offset, wait)
		if err != nil {
			return ExitError, err
		}
		if _, err := e.Out.Write(chunk.Data); err != nil {
			return ExitError, err
		}
		offset = chunk.NextOffset
		if chunk.Done || (!follow && len(chunk.Data) == 0) {
			return ExitSucceeded, nil
		}
		if len(chunk.Data) == 0 {
			select {
			case <-ctx.Done():
				return ExitError, ctx.Err()
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
}

// Cancel cancels a stage and, with wait, waits for its release.
func Cancel(ctx context.Context, e *Env, id string, wait bool) (int, error) {
	st, err := e.API.Delete(ctx, id)
	if err != nil {
		return ExitError, err
	}
	if wait {
		if st, err = e.API.Follow(ctx, id, nil); err != nil {
			return ExitError, err
		}
	}
	if e.JSON {
		return ExitSucceeded, e.printJSON(st)
	}
	fmt.Fprintf(e.Out, "stage %s: %s, %s\n", st.ID, st.Phase, st.Result)
	return ExitSucceeded, nil
}

// Pools prints every pool's depth.
func Pools(ctx context.Context, e *Env) (int, error) {
	p, err := e.API.Pools(ctx)
	if err != nil {
		return ExitError, err
	}
	if e.JSON {
		return ExitSucceeded, e.printJSON(p)
	}
	w := tabwriter.NewWriter(e.Out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "POOL\tIDLE\tPROVISIONING\tLEASED\tRELEASING\tMAX\tWARM TARGET\t")
	for _, d := range p.Pools {
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t\n", d.Name, d.Idle, d.Provisioning, d.Leased, d.Releasing, d.Max, d.WarmTarget)
	}
	return ExitSucceeded, w.Flush()
}

// List prints the recent stages.
func List(ctx context.Context, e *Env, since time.Duration, pool string, limit int) (int, error) {
	l, err := e.API.List(ctx, since, pool, limit)
	if err != nil {
		return ExitError, err
	}
	if e.JSON {
		return ExitSucceeded, e.printJSON(l)
	}
	w := tabwriter.NewWriter(e.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "STAGE\tPOOL\tPHASE\tRESULT\tCREATED\tTOOK\t")
	for _, s := range l.Stages {
		took := "-"
		if s.ReleasedAt != nil {
			took = s.ReleasedAt.Sub(s.CreatedAt).Round(time.Millisecond).String()
		}
		result := s.Result
		if result == "" {
			result = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t\n", s.ID, s.Pool, s.Phase, result, s.CreatedAt.Local().Format("2006-01-02 15:04:05"), took)
	}
	return ExitSucceeded, w.Flush()
}
