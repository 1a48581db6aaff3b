package executor

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/windows"
)

// ctrlBreakEnv, set to a step's process id, makes any binary that runs steps
// (the agent, or a test binary) act as the CTRL_BREAK helper for that step
// and exit, before its main runs.
const ctrlBreakEnv = "SLIPWAY_AGENT_CTRL_BREAK_PID"

// helperTimeout bounds a helper's run: attaching and sending take
// milliseconds, and the grace's kill does not wait for it anyway.
const helperTimeout = 5 * time.Second

var (
	kernel32          = windows.NewLazySystemDLL("kernel32.dll")
	procAttachConsole = kernel32.NewProc("AttachConsole")
	procFreeConsole   = kernel32.NewProc("FreeConsole")
)

func init() {
	if pid, ok := os.LookupEnv(ctrlBreakEnv); ok {
		if err := ctrlBreakHelper(pid); err != nil {
			fmt.Fprintln(os.Stderr, "ctrl-break helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

// sendCtrlBreak runs this binary as the helper for the step pid: a process
// without a console (AttachConsole fails for a process that has one), so it
// can attach to the step's. Errors are the helper's output: the caller kills
// after the grace whatever happens here.
func sendCtrlBreak(pid int) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("ctrl-break helper: %w", err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), ctrlBreakEnv+"="+strconv.Itoa(pid))
	cmd.SysProcAttr = &syscall.SysProcAttr{CreationFlags: windows.DETACHED_PROCESS}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("ctrl-break helper: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("%w: %s", err, bytes.TrimSpace(stderr.Bytes()))
		}
		return nil
	case <-time.After(helperTimeout):
		_ = cmd.Process.Kill()
		return fmt.Errorf("ctrl-break helper for %d: no answer in %s", pid, helperTimeout)
	}
}

// ctrlBreakHelper attaches to the console of the step whose process id is
// pidText and sends CTRL_BREAK to the step's process group there. The group's
// id is the step's process id (CREATE_NEW_PROCESS_GROUP); the helper is not
// in it, so the event does not end the helper first.
func ctrlBreakHelper(pidText string) error {
	pid, err := strconv.ParseUint(pidText, 10, 32)
	if err != nil {
		return fmt.Errorf("%s=%q: not a process id", ctrlBreakEnv, pidText)
	}
	_, _, _ = procFreeConsole.Call()
	if ok, _, err := procAttachConsole.Call(uintptr(pid)); ok == 0 {
		return fmt.Errorf("attach to the console of process %d: %w", pid, err)
	}
	if err := windows.GenerateConsoleCtrlEvent(windows.CTRL_BREAK_EVENT, uint32(pid)); err != nil {
		return fmt.Errorf("CTRL_BREAK to process group %d: %w", pid, err)
	}
	return nil
}
