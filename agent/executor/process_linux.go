package executor

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// startIn has the step's process start inside its cgroup (clone3 with
// CLONE_INTO_CGROUP): it is in there before it runs any code of its own.
func startIn(attr *syscall.SysProcAttr, cg *Cgroup) {
	if cg != nil {
		attr.UseCgroupFD = true
		attr.CgroupFD = cg.fd
	}
}

// growPipe enlarges the output pipe to 1 MiB, so a chatty step makes fewer,
// larger writes. Failure only costs speed.
func growPipe(w *os.File) {
	_, _ = unix.FcntlInt(w.Fd(), unix.F_SETPIPE_SZ, 1<<20)
}
