package executor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"time"
)

// Process runs steps as host processes. Each step gets its own process group
// (a job object on Windows), and on Linux its own cgroup when Cgroups is set,
// so stopping it reaches every process it started, and whatever it left
// running is killed when its main process exits.
type Process struct {
	// Cgroups, when set, holds each step in a cgroup v2 of its own: what
	// leaves the process group (setsid, env -i) stays in it.
	Cgroups *Cgroups
}

var _ Executor = (*Process)(nil)

// After the step's processes were killed, its output ends at once unless a
// process that escaped the group (setsid) holds the pipe: after escapeDelay
// such processes are looked up by the step's marker and killed; drainTimeout
// bounds the wait for the output in any case.
const (
	escapeDelay  = 100 * time.Millisecond
	drainTimeout = 2 * time.Second
)

// outputBufferSize is the pump's read size: large reads keep the syscall count
// low when a step prints a lot.
const outputBufferSize = 256 << 10

type processHandle struct {
	cmd    *exec.Cmd
	group  processGroup
	marker string

	stopOnce sync.Once
	done     chan struct{}
	result   Result // set before done is closed
}

// Start starts spec.Argv on the host.
func (p *Process) Start(_ context.Context, spec Spec) (Handle, error) {
	if len(spec.Argv) == 0 || spec.Argv[0] == "" {
		return nil, ErrNoCommand
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("output pipe: %w", err)
	}
	growPipe(w)
	// Not CommandContext: the step's life is not the request's.
	cmd := exec.Command(spec.Argv[0], spec.Argv[1:]...)
	cmd.Env = spec.Env
	cmd.Dir = spec.Dir
	cmd.Stdout, cmd.Stderr = w, w
	var cg *Cgroup
	if p.Cgroups != nil {
		if cg, err = p.Cgroups.New(spec.Name); err != nil {
			_ = r.Close()
			_ = w.Close()
			return nil, err
		}
	}
	if err := prepare(cmd, spec.User, cg); err != nil {
		_ = r.Close()
		_ = w.Close()
		if cg != nil {
			cg.Remove()
		}
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		_ = r.Close()
		_ = w.Close()
		if cg != nil {
			cg.Remove()
		}
		return nil, fmt.Errorf("start %s: %w", spec.Argv[0], err)
	}
	// The step holds the only write end now: EOF comes when all its processes
	// are gone.
	_ = w.Close()
	group, err := attach(cmd, cg)
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = r.Close()
		if cg != nil {
			cg.Remove()
		}
		return nil, err
	}
	h := &processHandle{cmd: cmd, group: group, marker: spec.Marker, done: make(chan struct{})}
	pumped := make(chan struct{})
	go func() {
		defer close(pumped)
		pump(spec.Output, r)
	}()
	go h.wait(r, pumped)
	return h, nil
}

// KillLeftovers ends what the stage's steps left running (daemons that left
// their process groups), every step cgroup of this agent, and reports how
// many steps had some. The stage's teardown calls it.
func (p *Process) KillLeftovers() int {
	if p.Cgroups == nil {
		return 0
	}
	return p.Cgroups.KillAll()
}

// pump copies the step's output until EOF. It keeps reading after a write
// error, so a full disk never blocks the step on a full pipe.
func pump(out interface{ Write([]byte) (int, error) }, r *os.File) {
	buf := make([]byte, outputBufferSize)
	failed := false
	for {
		n, err := r.Read(buf)
		if n > 0 && !failed {
			if _, werr := out.Write(buf[:n]); werr != nil {
				failed = true
			}
		}
		if err != nil {
			return
		}
	}
}

func (h *processHandle) wait(r *os.File, pumped <-chan struct{}) {
	waitErr := h.cmd.Wait()
	// The step is over when its main process is: nothing left in its
	// process group may outlive it. What left the group and let go of the
	// output (a daemon for later steps) lives until the stage ends.
	h.group.killGroup()
	select {
	case <-pumped:
	case <-time.After(escapeDelay):
		// Something holds the output: every process of the step goes.
		h.group.killAll()
		KillMarked(h.marker)
		select {
		case <-pumped:
		case <-time.After(drainTimeout):
			_ = r.Close() // unblocks the pump's Read
			<-pumped
		}
	}
	_ = r.Close()
	res := Result{ExitCode: h.cmd.ProcessState.ExitCode()}
	res.CPU, res.PeakMemory = h.group.usage(h.cmd.ProcessState)
	var exitErr *exec.ExitError
	if waitErr != nil && !errors.As(waitErr, &exitErr) {
		res.Err = fmt.Errorf("wait for step: %w", waitErr)
	}
	h.group.close()
	h.result = res
	close(h.done)
}

func (h *processHandle) Wait() Result {
	<-h.done
	return h.result
}

func (h *processHandle) Stop(grace time.Duration) {
	h.stopOnce.Do(func() {
		select {
		case <-h.done:
			return
		default:
		}
		h.group.terminate()
		go func() {
			timer := time.NewTimer(grace)
			defer timer.Stop()
			select {
			case <-h.done:
			case <-timer.C:
				h.group.killAll()
			}
		}()
	})
}
