package stage

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/slipway-ci/slipway/internal/stage/record"
)

// StageSummary is a stage as GET /v1/stages lists it.
type StageSummary struct {
	ID         string     `json:"id"`
	Pool       string     `json:"pool"`
	Phase      string     `json:"phase"`
	Result     string     `json:"result,omitempty"`
	Reason     string     `json:"reason,omitempty"`
	VM         string     `json:"vm,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
	ReleasedAt *time.Time `json:"released_at,omitempty"`
}

// StageList is the answer of GET /v1/stages.
type StageList struct {
	Stages []StageSummary `json:"stages"`
}

// Limits of GET /v1/stages.
const (
	DefaultListSince = 24 * time.Hour
	MaxListSince     = 7 * 24 * time.Hour // the records' retention
	DefaultListLimit = 20
	MaxListLimit     = 100
)

// list handles GET /v1/stages: the caller's stages (an operator's: every
// stage) created since ?since= ago, newest first, of ?pool= only if given.
func (a *API) list(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	values := r.URL.Query()
	errs := unknownParams(values, "since", "pool", "limit")
	since, limit := DefaultListSince, DefaultListLimit
	if v := values.Get("since"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 || d > MaxListSince {
			errs = append(errs, fmt.Errorf("since %q: want a duration up to %s", v, MaxListSince))
		}
		since = d
	}
	if v := values.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxListLimit {
			errs = append(errs, fmt.Errorf("limit %q: want a whole number from 1 to %d", v, MaxListLimit))
		}
		limit = n
	}
	if err := errors.Join(errs...); err != nil {
		return invalid(err)
	}
	principal, err := a.caller(r)
	if err != nil {
		return err
	}
	filter := record.StageFilter{Pool: values.Get("pool"), Owner: principal}
	if a.operator(principal) {
		filter.Owner = ""
	}
	refs, err := a.Stages.ListStages(ctx, a.now().Add(-since), filter, limit)
	if err != nil {
		return err
	}
	out := StageList{Stages: make([]StageSummary, len(refs))}
	errs = make([]error, len(refs))
	var wg sync.WaitGroup
	slots := make(chan struct{}, 10)
	for i, ref := range refs {
		wg.Go(func() {
			slots <- struct{}{}
			defer func() { <-slots }()
			st, err := a.Stages.GetStage(ctx, ref.ID)
			if errors.Is(err, record.ErrStageNotFound) {
				// Its records expired before its index entry.
				out.Stages[i] = StageSummary{ID: ref.ID, Pool: ref.Pool, Phase: PhaseReleased, CreatedAt: ref.CreatedAt}
				return
			}
			if err != nil {
				errs[i] = err
				return
			}
			out.Stages[i] = StageSummary{
				ID: st.ID, Pool: st.Pool, Phase: phase(st), Result: st.Result, Reason: st.Reason, VM: st.VM,
				CreatedAt: st.CreatedAt, ReleasedAt: timePtr(st.ReleasedAt),
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}
