package executor

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/windows"
)

// processGroup is the step's job object: every process the step starts joins
// it, and terminating the job ends them all.
type processGroup struct {
	job windows.Handle
	pid int
}

func prepare(cmd *exec.Cmd, userSpec string, _ *Cgroup) error {
	if userSpec != "" {
		return fmt.Errorf("user %q: running a step as another user is not supported on Windows", userSpec)
	}
	// The step gets a console of its own (hidden) and is the first process
	// of a new group, so a CTRL_BREAK sent on that console reaches the step's
	// processes and no others (see terminate).
	cmd.SysProcAttr = &syscall.SysProcAttr{CreationFlags: windows.CREATE_NEW_PROCESS_GROUP | windows.CREATE_NO_WINDOW}
	return nil
}

// attach puts the started process into a new job object. A child the process
// starts before this call escapes the job; in practice the window is a few
// microseconds, before the new process has run any of its own code.
func attach(cmd *exec.Cmd, _ *Cgroup) (processGroup, error) {
	job, err := windows.CreateJobObject(nil, nil)
	if err != nil {
		return processGroup{}, fmt.Errorf("create job object: %w", err)
	}
	info := windows.JOBOBJECT_EXTENDED_LIMIT_INFORMATION{
		BasicLimitInformation: windows.JOBOBJECT_BASIC_LIMIT_INFORMATION{
			LimitFlags: windows.JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
		},
	}
	if _, err := windows.SetInformationJobObject(job, windows.JobObjectExtendedLimitInformation,
		uintptr(unsafe.Pointer(&info)), uint32(unsafe.Sizeof(info))); err != nil {
		_ = windows.CloseHandle(job)
		return processGroup{}, fmt.Errorf("configure job object: %w", err)
	}
	proc, err := windows.OpenProcess(windows.PROCESS_SET_QUOTA|windows.PROCESS_TERMINATE, false, uint32(cmd.Process.Pid))
	if err != nil {
		_ = windows.CloseHandle(job)
		return processGroup{}, fmt.Errorf("open step process: %w", err)
	}
	defer func() { _ = windows.CloseHandle(proc) }()
	if err := windows.AssignProcessToJobObject(job, proc); err != nil {
		_ = windows.CloseHandle(job)
		return processGroup{}, fmt.Errorf("assign step to job object: %w", err)
	}
	return processGroup{job: job, pid: cmd.Process.Pid}, nil
}

// terminate asks the step to stop with CTRL_BREAK, the Windows console's
// SIGTERM. The event reaches only processes on the sender's console, and the
// agent has none of the step's: as a service it has none at all. So a helper
// (see ctrlbreak_windows.go) attaches to the step's console and sends it
// there; the grace's kill follows either way, so a failure is only logged.
func (g processGroup) terminate() {
	go func() {
		if err := sendCtrlBreak(g.pid); err != nil {
			slog.Warn("the step did not get CTRL_BREAK: it is killed after the grace", "pid", g.pid, "err", err)
		}
	}()
}

func (g processGroup) killGroup() { _ = windows.TerminateJobObject(g.job, 1) }

func (g processGroup) killAll() { g.killGroup() }

func (g processGroup) close() { _ = windows.CloseHandle(g.job) }

// usage reads the job's accounting: CPU time of every process that ran in it
// and the peak memory committed by the job.
func (g processGroup) usage(ps *os.ProcessState) (time.Duration, int64) {
	cpu := ps.UserTime() + ps.SystemTime()
	var info windows.JOBOBJECT_EXTENDED_LIMIT_INFORMATION
	err := windows.QueryInformationJobObject(g.job, windows.JobObjectExtendedLimitInformation,
		uintptr(unsafe.Pointer(&info)), uint32(unsafe.Sizeof(info)), nil)
	if err != nil {
		return cpu, 0
	}
	return cpu, int64(info.PeakJobMemoryUsed)
}

func growPipe(*os.File) {}
