package stage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/lambda"
	lambdatypes "github.com/aws/aws-sdk-go-v2/service/lambda/types"
	"github.com/aws/aws-sdk-go-v2/service/sfn"
	sfntypes "github.com/aws/aws-sdk-go-v2/service/sfn/types"

	"github.com/slipway-ci/slipway/internal/lease"
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
type Watchdog struct{ *Deps }

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
	refs, err := w.Books.ListStages(ctx, now.Add(-set.MaxStageTimeout-set.LeaseMargin-time.Hour), lease.StageFilter{}, watchLimit)
	if err != nil {
		return out, err
	}
	var errs []error
	for _, ref := range refs {
		st, err := w.Books.GetStage(ctx, ref.ID)
		if errors.Is(err, lease.ErrStageNotFound) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !st.ReleasedAt.IsZero() || now.Sub(st.CreatedAt) < set.WatchGrace {
			continue
		}
		out.Checked++
		why, err := w.stuck(ctx, st, now)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if why == "" {
			continue
		}
		out.Stuck = append(out.Stuck, st.ID+": "+why)
		w.log().Warn("a stage is not progressing: releasing it", "stage", st.ID, "why", why)
		if err := w.release(ctx, st.ID, why); err != nil {
			errs = append(errs, err)
		}
	}
	return out, errors.Join(errs...)
}

// stuck says why st is not progressing, "" when it is.
func (w *Watchdog) stuck(ctx context.Context, st *lease.Stage, now time.Time) (string, error) {
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

// release invokes the release of a stuck stage, asynchronously.
func (w *Watchdog) release(ctx context.Context, id, why string) error {
	payload, _ := json.Marshal(CleanupInput{StageID: id, Stuck: why})
	_, err := w.Invoker.Invoke(ctx, &lambda.InvokeInput{
		FunctionName: aws.String(w.CleanupFunction), InvocationType: lambdatypes.InvocationTypeEvent, Payload: payload,
	})
	if err != nil {
		return fmt.Errorf("release stuck stage %s: %w", id, err)
	}
	return nil
}
