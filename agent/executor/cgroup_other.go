//go:build !linux

package executor

import (
	"errors"
	"log/slog"
	"syscall"
	"time"
)

// Cgroups are Linux's; elsewhere steps are contained by their process group
// (a job object on Windows).
type Cgroups struct{}

// Cgroup is a step's cgroup; never made outside Linux.
type Cgroup struct{}

// OpenCgroups reports that there are none here.
func OpenCgroups(*slog.Logger) (*Cgroups, error) { return nil, errors.New("cgroups: Linux only") }

// New is never called outside Linux.
func (*Cgroups) New(string) (*Cgroup, error) { return nil, errors.New("cgroups: Linux only") }

// Close does nothing.
func (*Cgroups) Close() {}

// Memory reports false.
func (*Cgroups) Memory() bool { return false }

// Kill does nothing.
func (*Cgroup) Kill() {}

// Signal does nothing.
func (*Cgroup) Signal(syscall.Signal) {}

// Usage reports nothing.
func (*Cgroup) Usage() (time.Duration, int64) { return 0, 0 }

// Remove does nothing.
func (*Cgroup) Remove() {}

// RemoveIfEmpty does nothing.
func (*Cgroup) RemoveIfEmpty() {}

// KillAll does nothing.
func (*Cgroups) KillAll() int { return 0 }
