// Package stagecli is the logic of `slipway stage` and `slipway pools`: the
// delegate's view of stages at a terminal or in a script.
package stagecli

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/internal/delegate"
	"github.com/slipway-ci/slipway/internal/stage"
)

// Exit codes of `slipway stage run`.
const (
	ExitSucceeded = 0
	ExitFailed    = 1
	ExitStopped   = 2 // canceled or timed out
	ExitError     = 3 // usage, or an infrastructure error
)

// ExitCode is the exit code a stage's result gives.
func ExitCode(result string) int {
	switch result {
	case stage.Succeeded:
		return ExitSucceeded
	case stage.Failed:
		return ExitFailed
	case stage.Canceled, stage.TimedOut:
		return ExitStopped
	default:
		return ExitError
	}
}

// Env is what the commands work with.
type Env struct {
	API *delegate.Client
	Out io.Writer
	// JSON prints one JSON document instead of text (--output json).
	JSON bool
	// Live shows a live view instead of timestamped lines (a terminal).
	Live bool
	// Getenv resolves --secret NAME=env:VAR.
	Getenv func(string) string
	// LogPoll is the pause between two log reads of a running step that
	// gave nothing, beyond their long-poll (default 500 ms).
	LogPoll time.Duration
	// Now is the clock for timestamps (default time.Now).
	Now func() time.Time

	view  *liveView  // while a live view runs
	outMu sync.Mutex // one line at a time from the log followers
}

func (e *Env) now() time.Time {
	if e.Now != nil {
		return e.Now()
	}
	return time.Now()
}

// RunOptions are the flags of `slipway stage run`.
type RunOptions struct {
	ID   string
	Pool string
	// Steps are shell commands, each a group of its own, in order.
	Steps []string
	// File is a stage file (instead of Steps); Pool and ID override its.
	File string
	// Env and Secrets are NAME=value and NAME=env:VAR.
	Env, Secrets []string
	// TimeoutSeconds bounds the stage (0: the API's default).
	TimeoutSeconds int64
}

// UsageError is a mistake in the command line: exit code 3, with the
// message.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// Spec builds the stage the options describe.
func (o *RunOptions) Spec(getenv func(string) string) (*stage.Spec, error) {
	var errs []error
	spec := &stage.Spec{}
	if o.File != "" {
		if len(o.Steps) > 0 {
			return nil, &UsageError{errors.New("--file and --step: give one or the other")}
		}
		var err error
		if spec, err = LoadStageFile(o.File); err != nil {
			return nil, err
		}
	}
	if o.ID != "" {
		spec.ID = o.ID
	}
	if spec.ID == "" {
		spec.ID = newID()
	}
	if o.Pool != "" {
		spec.Pool = o.Pool
	}
	if o.TimeoutSeconds != 0 {
		spec.TimeoutSeconds = o.TimeoutSeconds
	}
	if spec.Pool == "" {
		errs = append(errs, errors.New("--pool: required"))
	}
	if len(o.Steps) == 0 && o.File == "" {
		errs = append(errs, errors.New("--step or --file: give the stage's steps"))
	}
	for i, cmd := range o.Steps {
		spec.Groups = append(spec.Groups, stage.Group{
			Final: i == len(o.Steps)-1,
			Steps: []stage.Step{{ID: fmt.Sprintf("step-%d", i+1), Step: agentapi.Step{Script: cmd}}},
		})
	}
	for _, kv := range o.Env {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || name == "" {
			errs = append(errs, fmt.Errorf("--env %q: want NAME=value", kv))
			continue
		}
		if spec.Env == nil {
			spec.Env = map[string]string{}
		}
		spec.Env[name] = value
	}
	for _, ref := range o.Secrets {
		name, source, ok := strings.Cut(ref, "=")
		variable, fromEnv := strings.CutPrefix(source, "env:")
		if !ok || name == "" || !fromEnv || variable == "" {
			// Only references: a secret's value on the command line would
			// be in the shell's history and in ps.
			errs = append(errs, fmt.Errorf("--secret %q: want NAME=env:VARIABLE", name))
			continue
		}
		value := getenv(variable)
		if value == "" {
			errs = append(errs, fmt.Errorf("--secret %s: the variable %s is empty or not set", name, variable))
			continue
		}
		if spec.Secrets == nil {
			spec.Secrets = map[string]string{}
		}
		spec.Secrets[name] = value
	}
	if err := errors.Join(errs...); err != nil {
		return nil, &UsageError{err}
	}
	return spec, nil
}

func newID() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return "run-" + time.Now().UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b)
}

// Run creates the stage, follows its steps' logs as they run, prints each
// step's result and the phase timings, and returns the exit code of the
// stage's result. When ctx ends (Ctrl-C) it cancels the stage and waits for
// its release.
func Run(ctx context.Context, e *Env, spec *stage.Spec) (int, error) {
	st, err := e.API.Create(ctx, spec, 0)
	if err != nil && ctx.Err() != nil {
		// Interrupted with the create in flight: it may have reached the
		// API, and a stage nobody watches would run on. Cancel the id this
		// run chose; one that was never created is not found.
		bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		e.linef("stage %s: interrupted while it was being created: canceling it", spec.ID)
		if _, derr := e.API.Delete(bg, spec.ID); derr != nil && !delegate.IsCode(derr, stage.CodeNotFound) {
			return ExitError, fmt.Errorf("%w; canceling stage %s: %w", err, spec.ID, derr)
		}
		return ExitError, err
	}
	if err != nil {
		return ExitError, err
	}
	e.linef("stage %s: created on pool %s, %s", st.ID, st.Pool, st.Phase)
	final, err := e.follow(ctx, st.ID, st.Phase)
	if ctx.Err() != nil {
		// Ctrl-C: cancel, and wait for the release with a context of our
		// own, so no VM is left to the stage's timeout.
		bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		e.linef("stage %s: interrupted: canceling it and waiting for its release", spec.ID)
		if _, err := e.API.Delete(bg, spec.ID); err != nil {
			return ExitError, err
		}
		if final, err = e.API.Follow(bg, spec.ID, nil); err != nil {
			return ExitError, err
		}
	} else if err != nil {
		return ExitError, err
	}
	if e.JSON {
		return ExitCode(final.Result), e.printJSON(final)
	}
	e.summary(final)
	return ExitCode(final.Result), nil
}

// follow watches the stage until its release, printing each step's log as
// it comes (text mode) and phase changes.
func (e *Env) follow(ctx context.Context, id, phase string) (*stage.Status, error) {
	var wg sync.WaitGroup
	logCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	if e.Live && !e.JSON {
		e.view = startLive(e.Out, e.now)
		defer func() {
			e.view.close()
			e.view = nil
		}()
	}
	following := map[string]bool{}
	if phase == stage.PhaseQueued && e.view == nil {
		// Without the live view's spinner, say what the silence is.
		e.linef("stage %s: queued, waiting for a VM", id)
	}
	var released string
	st, err := e.API.Follow(ctx, id, func(st *stage.Status) {
		if e.view != nil {
			e.view.update(st)
		}
		if st.Phase != phase {
			phase = st.Phase
			switch {
			case phase == stage.PhaseReleased:
				// Said once the logs are read to their end, after their
				// last lines.
				released = fmt.Sprintf("stage %s: %s", st.ID, phase)
			case phase == stage.PhaseRunning && st.Timings.BoundAt != nil:
				e.linef("stage %s: running on %s (waited %s for it)", st.ID, st.VM, st.Timings.BoundAt.Sub(st.Timings.QueuedAt).Round(time.Millisecond))
			default:
				e.linef("stage %s: %s", st.ID, phase)
			}
		}
		if e.JSON {
			return
		}
		for _, g := range st.Groups {
			for _, s := range g.Steps {
				if following[s.ID] || s.State == stage.StatePending || s.State == stage.StateSkipped {
					continue
				}
				following[s.ID] = true
				wg.Go(func() { e.followLog(logCtx, id, s.ID) })
			}
		}
	})
	if err != nil {
		cancel()
	}
	// Released: the followers read the rest from the archive and end.
	wg.Wait()
	if released != "" {
		e.linef("%s", released)
	}
	return st, err
}

// followLog prints a step's log, a line at a time with the step's id,
// until it is whole. Each read long-polls for new bytes.
func (e *Env) followLog(ctx context.Context, id, step string) {
	pause := e.LogPoll
	if pause <= 0 {
		pause = 500 * time.Millisecond
	}
	var partial []byte
	err := e.API.FollowLog(ctx, id, step, pause, func(data []byte) error {
		partial = append(partial, data...)
		for {
			i := bytes.IndexByte(partial, '\n')
			if i < 0 {
				return nil
			}
			e.linef("[%s] %s", step, partial[:i])
			partial = partial[i+1:]
		}
	})
	if len(partial) > 0 {
		e.linef("[%s] %s", step, partial)
	}
	if err != nil && ctx.Err() == nil {
		e.linef("[%s] (log: %v)", step, err)
	}
}

// linef prints one timestamped line (text mode only).
func (e *Env) linef(format string, a ...any) {
	if e.JSON {
		return
	}
	if e.view != nil {
		e.view.println(fmt.Sprintf(format, a...))
		return
	}
	e.outMu.Lock()
	defer e.outMu.Unlock()
	fmt.Fprintf(e.Out, "%s %s\n", e.now().Format("15:04:05.000"), fmt.Sprintf(format, a...))
}

func (e *Env) printJSON(v any) error {
	enc := json.NewEncoder(e.Out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// summary prints every step's result and the phase timings.
func (e *Env) summary(st *stage.Status) {
	fmt.Fprintf(e.Out, "\nstage %s: %s", st.ID, st.Result)
	if st.Reason != "" {
		fmt.Fprintf(e.Out, " (%s)", st.Reason)
	}
	fmt.Fprintln(e.Out)
	for _, g := range st.Groups {
		for _, s := range g.Steps {
			fmt.Fprintf(e.Out, "  %-20s %s\n", s.ID, describeStep(&s))
		}
	}
	e.failedTests(st)
	t := st.Timings
	since := func(at *time.Time) string {
		if at == nil {
			return "-"
		}
		return at.Sub(t.QueuedAt).Round(time.Millisecond).String()
	}
	var steps time.Duration
	for _, g := range st.Groups {
		if g.StartedAt != nil && g.EndedAt != nil {
			steps += g.EndedAt.Sub(*g.StartedAt)
		}
	}
	// From the stage's creation: the wait for a VM is the time to its lease.
	fmt.Fprintf(e.Out, "timings from the create: a VM after %s, its agent ready after %s, steps ran %s, released after %s\n",
		since(t.LeasedAt), since(t.BoundAt), steps.Round(time.Millisecond), since(t.ReleasedAt))
}

func describeStep(s *stage.StepStatus) string {
	d := s.State
	if s.ExitCode != nil {
		d += fmt.Sprintf(", exit code %d", *s.ExitCode)
	}
	if s.StartedAt != nil && s.EndedAt != nil {
		d += ", " + s.EndedAt.Sub(*s.StartedAt).Round(time.Millisecond).String()
	}
	if len(s.Outputs) > 0 {
		keys := make([]string, 0, len(s.Outputs))
		for k := range s.Outputs {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = k + "=" + s.Outputs[k]
		}
		d += ", outputs " + strings.Join(parts, " ")
	}
	if s.Error != "" {
		d += ": " + s.Error
	}
	return d
}

// failedTests prints the test totals of the steps that had reports, and
// their failed tests.
func (e *Env) failedTests(st *stage.Status) {
	for _, g := range st.Groups {
		for _, s := range g.Steps {
			r := s.Tests
			if r == nil {
				continue
			}
			fmt.Fprintf(e.Out, "tests of %s: %d, %d failed, %d skipped, in %s (%d files)\n", s.ID, r.Tests, r.Failed, r.Skipped,
				(time.Duration(r.DurationMs) * time.Millisecond).String(), r.Files)
			for _, f := range r.Failures {
				name := f.Name
				if f.Class != "" {
					name = f.Class + " > " + f.Name
				}
				fmt.Fprintf(e.Out, "  FAIL %s\n", name)
				if f.Message != "" {
					fmt.Fprintf(e.Out, "       %s\n", strings.ReplaceAll(f.Message, "\n", "\n       "))
				}
			}
			for _, n := range r.Notes {
				fmt.Fprintf(e.Out, "  note: %s\n", n)
			}
		}
	}
}
