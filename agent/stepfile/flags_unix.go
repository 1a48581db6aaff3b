//go:build unix

package stepfile

import "syscall"

// openFlags: a FIFO's open returns at once instead of waiting for a writer.
const openFlags = syscall.O_NONBLOCK
