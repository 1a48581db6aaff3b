//go:build unix && !linux

package executor

import (
	"os"
	"syscall"
)

// maxRSSBytes: the BSDs and macOS report ru_maxrss in bytes.
func maxRSSBytes(ru *syscall.Rusage) int64 { return ru.Maxrss }

func growPipe(*os.File) {}
