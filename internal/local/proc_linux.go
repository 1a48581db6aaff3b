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
