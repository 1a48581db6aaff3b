// Package executor runs one CI step: as a host process (Process) or in a
// container (Docker). Both stream the step's stdout and stderr, in order, into
// one writer, stop the step with a grace period, and report its exit.
package executor

import (
	"context"
	"errors"
	"io"
	"runtime"
	"time"
)

// Spec is what an executor needs to run a step; the agent resolves it from
// the API's step spec.
type Spec struct {
	// Name identifies the step in resource names (container names).
	Name string
	// Argv is the command line; for a container step it may be empty to run
	// the image's own entrypoint.
	Argv []string
	// Env is the complete environment, KEY=VALUE.
	Env []string
	// Dir is the working directory (on the host, and in the container, where
	// Mounts put the host folders at the same paths).
	Dir string
	// User is "uid" or "uid:gid"; empty runs as the agent's user.
	User string
	// Marker is an Env entry unique to the step: processes that escape its
	// process group are found by it (KillMarked).
	Marker string

	// Container steps only.
	Image   string
	Pull    string   // agentapi.PullIfMissing, PullNever or PullAlways
	Network string   // "host" or "none"
	Mounts  []string // host folders mounted read-write at the same path
	// Aliases mount host folders read-write at other paths: container path
	// by host folder.
	Aliases map[string]string
	// MemoryBytes limits the container's memory (0: none).
	MemoryBytes int64
	// Privileged gives the container every capability and device.
	Privileged bool
	// RegistryAuth is the registry login for pulling Image, as the engine's
	// X-Registry-Auth header takes it ("": none).
	RegistryAuth string

	// Output receives stdout and stderr. The executor calls it from one
	// goroutine at a time.
	Output io.Writer
}

// Result is how a step ended.
type Result struct {
	// ExitCode is the main process's exit code; -1 when it was killed by a
	// signal or never started.
	ExitCode  int
	OOMKilled bool
	// Err is set when the step could not run at all (no such command or
	// image); the exit code then means nothing.
	Err error
	// CPU is the user plus system time of the step's processes that were
	// waited for; PeakMemory the largest resident set among them.
	CPU        time.Duration
	PeakMemory int64
}

// Handle is a step that was started.
type Handle interface {
	// Wait blocks until the step has ended, every process it started is gone
	// and its output has been written to Spec.Output. It may be called more
	// than once and from several goroutines.
	Wait() Result
	// Stop asks the step to end (SIGTERM, or the container's stop signal) and
	// kills it after grace. It returns at once; Wait tells when it ended.
	Stop(grace time.Duration)
}

// Executor starts steps.
type Executor interface {
	// Start starts the step described by spec. An error means nothing was
	// started and nothing needs cleaning up.
	Start(ctx context.Context, spec Spec) (Handle, error)
}

// ErrNoCommand is returned for a host step without a command line.
var ErrNoCommand = errors.New("step has no command")

// DefaultShell is the shell of a script step that names none.
func DefaultShell(goos string) string {
	if goos == "windows" {
		return "powershell"
	}
	return "sh"
}

// ScriptArgv is the command line that runs script with shell, set to stop at
// the first failing command, as CI users expect.
func ScriptArgv(shell, script string) []string {
	if shell == "" {
		shell = DefaultShell(runtime.GOOS)
	}
	switch shell {
	case "bash":
		return []string{"bash", "--noprofile", "--norc", "-e", "-o", "pipefail", "-c", script}
	case "powershell", "pwsh":
		exe := shell
		if shell == "powershell" && runtime.GOOS == "windows" {
			exe = "powershell.exe"
		}
		return []string{exe, "-NoLogo", "-NoProfile", "-NonInteractive", "-Command",
			"$ErrorActionPreference = 'Stop'\n" + script + "\nif ((Test-Path -LiteralPath variable:\\LASTEXITCODE)) { exit $LASTEXITCODE }"}
	case "cmd":
		return []string{"cmd.exe", "/D", "/E:ON", "/V:OFF", "/S", "/C", script}
	default:
		return []string{shell, "-e", "-c", script}
	}
}
