//go:build unix && !linux

package executor

import (
	"os"
	"syscall"
)

func startIn(*syscall.SysProcAttr, *Cgroup) {}

func growPipe(*os.File) {}
