package executor

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// maxRSSBytes converts ru_maxrss, which Linux reports in KiB.
func maxRSSBytes(ru *syscall.Rusage) int64 { return ru.Maxrss * 1024 }

// growPipe enlarges the output pipe to 1 MiB, so a chatty step makes fewer,
// larger writes. Failure only costs speed.
func growPipe(w *os.File) {
	_, _ = unix.FcntlInt(w.Fd(), unix.F_SETPIPE_SZ, 1<<20)
}
