// Package executor runs one CI step: as a host process (Process) or in a
// container (Docker). Both stream the step's stdout and stderr, in order, into
// one writer, stop the step with a grace period, and report its exit.
package executor

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"strings"
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

// Script is how a script step runs: its command line and, for a shell that
// reads scripts from files (cmd, PowerShell), the file to write first.
type Script struct {
	Argv []string
	// File is where the script goes (empty: it is on the command line),
	// with Data its contents.
	File string
	Data []byte
}

// ScriptCommand is how shell runs script on goos, set to stop at the first
// failing command where the shell can, as CI users expect; a script file
// goes in dir (the step's own folder). cmd and PowerShell read the script
// from a file: given as one argument, cmd runs its first line only, and
// Windows' argument quoting (\") is not undone by cmd.
func ScriptCommand(goos, shell, script, dir string) Script {
	if shell == "" {
		shell = DefaultShell(goos)
	}
	switch shell {
	case "bash":
		return Script{Argv: []string{"bash", "--noprofile", "--norc", "-e", "-o", "pipefail", "-c", script}}
	case "powershell", "pwsh":
		exe := shell
		if shell == "powershell" && goos == "windows" {
			exe = "powershell.exe"
		}
		file := filepath.Join(dir, "script.ps1")
		// With a byte order mark: Windows PowerShell reads a file without
		// one in the machine's code page.
		data := "\ufeff$ErrorActionPreference = 'Stop'\n" + script +
			"\nif ((Test-Path -LiteralPath variable:\\LASTEXITCODE)) { exit $LASTEXITCODE }\n"
		return Script{
			Argv: []string{exe, "-NoLogo", "-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-File", file},
			File: file, Data: []byte(data),
		}
	case "cmd":
		file := filepath.Join(dir, "script.cmd")
		// cmd reads a batch file's lines ending in CRLF; @echo off keeps its
		// commands out of the log, as on the command line. The path goes
		// unquoted by us: cmd takes a quoted executable path as it is.
		data := "@echo off\r\n" + strings.ReplaceAll(strings.ReplaceAll(script, "\r\n", "\n"), "\n", "\r\n") + "\r\n"
		return Script{Argv: []string{"cmd.exe", "/D", "/E:ON", "/V:OFF", "/C", file}, File: file, Data: []byte(data)}
	default:
		return Script{Argv: []string{shell, "-e", "-c", script}}
	}
}
