package fleet

import (
	"os/exec"
	"syscall"
)

// tieToParent has the kernel kill a local agent when the process that
// started it dies, so a killed `slipway local` or test leaves no agent.
func tieToParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
