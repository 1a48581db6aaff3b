package local

import (
	"os/exec"
	"syscall"
)

// detach gives the child its own process group (so stop reaches what it
// starts, too) and has the kernel kill it if this process dies first: a
// `slipway local` killed with SIGKILL leaves no service behind.
func detach(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// processAlive says whether pid is a process (another user's counts).
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || err == syscall.EPERM
}
