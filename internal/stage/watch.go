package stage

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sfn"
	sfntypes "github.com/aws/aws-sdk-go-v2/service/sfn/types"

	"github.com/slipway-ci/slipway/internal/stage/record"
)

// Watchdog finds the stages that are not progressing and has them
// released: a stage whose execution never started (the create recorded it,
// then StartExecution failed), one whose execution ended while the stage
// did not (a status change the rule never delivered, a release that
// failed), and one whose result is known but whose release never finished
// (the store was down when it ran). Each is handed to the release
// (Cleanup, asynchronously), which ends it `error` with the reason, unless
// it has a result, and gives its VM back. The refill function runs it on
// its schedule: it reads stages, and the release writes them.
type Watchdog struct {
	base
	Stages          watchedStages
	Executions      describer
	StateMachineARN string
	Invoker         Invoker
	CleanupFunction string
}

// NewWatchdog is the watchdog the refill function runs: it reads stages and
// their executions, and invokes the release.
func NewWatchdog(d *Deps) *Watchdog {
	return &Watchdog{base: d.base(), Stages: d.Stages, Executions: d.Executions, StateMachineARN: d.StateMachineARN,
		Invoker: d.Invoker, CleanupFunction: d.CleanupFunction}
}

// watchedStages reads stages: the list of recent ones, then each.
type watchedStages interface {
	ListStages(ctx context.Context, since time.Time, f record.StageFilter, limit int) ([]record.StageRef, error)
	GetStage(ctx context.Context, id string) (*record.Stage, error)
}

// describer reads an execution (states:DescribeExecution).
type describer interface {
	DescribeExecution(ctx context.Context, params *sfn.DescribeExecutionInput, optFns ...func(*sfn.Options)) (*sfn.DescribeExecutionOutput, error)
}

// Watched is what one check found.
type Watched struct {
	Checked int      `json:"checked"`
	Stuck   []string `json:"stuck,omitempty"` // "id: why"
}

// watchLimit bounds the stages one check reads: the newest first.
const watchLimit = 1000

// Check looks at the stages created within the longest a stage may live
// that are not released, and releases those stuck for longer than the
// grace (Settings.WatchGrace).
func (w *Watchdog) Check(ctx context.Context) (Watched, error) {
	var out Watched
	set := w.settings()
	now := w.now()
	refs, err := w.Stages.ListStages(ctx, now.Add(-set.MaxStageTimeout-set.LeaseMargin-time.Hour), record.StageFilter{}, watchLimit)
	if err != nil {
		return out, err
	}
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	slots := make(chan struct{}, 10) // reads side by side, as a list's
	for _, ref := range refs {
		if now.Sub(ref.CreatedAt) < set.WatchGrace {
			continue // too young to be stuck: not even read
		}
		wg.Go(func() {
			slots <- struct{}{}
			defer func() { <-slots }()
			why, err := w.check(ctx, ref.ID, now)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, errNotWatched):
			case err != nil:
				errs = append(errs, err)
			case why == "":
				out.Checked++
			default:
				out.Checked++
				out.Stuck = append(out.Stuck, ref.ID+": "+why)
			}
		})
	}
	wg.Wait()
	sort.Strings(out.Stuck)
	return out, errors.Join(errs...)
}

// errNotWatched: the stage is released, or its records expired.
var errNotWatched = errors.New("not watched")

// check reads one stage and, if it is stuck, hands it to the release; it
// says why it was stuck.
func (w *Watchdog) check(ctx context.Context, id string, now time.Time) (string, error) {
	st, err := w.Stages.GetStage(ctx, id)
	if errors.Is(err, record.ErrStageNotFound) {
		return "", errNotWatched
	}
	if err != nil {
		return "", err
	}
	if !st.ReleasedAt.IsZero() {
		return "", errNotWatched
	}
	why, err := w.stuck(ctx, st, now)
	if err != nil || why == "" {
		return "", err
	}
	w.log().Warn("a stage is not progressing: releasing it", "stage", st.ID, "why", why)
	return why, invokeAsync(ctx, w.Invoker, w.CleanupFunction, CleanupInput{StageID: st.ID, Stuck: why})
}

// stuck says why st is not progressing, "" when it is.
func (w *Watchdog) stuck(ctx context.Context, st *record.Stage, now time.Time) (string, error) {
	grace := w.settings().WatchGrace
	if st.Result != "" {
		if now.Sub(st.EndedAt) < grace {
			return "", nil
		}
		return fmt.Sprintf("its result (%s) has been known for %s, and it was never released", st.Result, now.Sub(st.EndedAt).Round(time.Second)), nil
	}
	arn := strings.Replace(w.StateMachineARN, ":stateMachine:", ":execution:", 1) + ":" + ExecutionName(st)
	ex, err := w.Executions.DescribeExecution(ctx, &sfn.DescribeExecutionInput{ExecutionArn: aws.String(arn)})
	var missing *sfntypes.ExecutionDoesNotExist
	switch {
	case errors.As(err, &missing):
		return "its execution never started", nil
	case err != nil:
		return "", fmt.Errorf("describe the execution of stage %s: %w", st.ID, err)
	case ex.Status != sfntypes.ExecutionStatusRunning:
		if ex.StopDate != nil && now.Sub(*ex.StopDate) < grace {
			return "", nil // the release the rule sends is on its way
		}
		return fmt.Sprintf("its execution ended %s while the stage did not", ex.Status), nil
	}
	return "", nil
}
