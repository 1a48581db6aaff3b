package fleet

import (
	"os/exec"
	"syscall"
)

// tieToParent has the kernel stop a local agent when the process that
// started it dies: SIGTERM, which the agent answers as a VM's shutdown, by
// stopping its steps (their cgroups, process groups and containers) before
// it exits. A `slipway local` or test killed with SIGKILL then leaves
// neither an agent nor a step behind; SIGKILL here would orphan the steps.
func tieToParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
