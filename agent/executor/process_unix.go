//go:build unix

package executor

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// processGroup is the step's process group; its id is the main process's pid.
type processGroup struct{ pgid int }

func prepare(cmd *exec.Cmd, userSpec string) error {
	attr := &syscall.SysProcAttr{Setpgid: true}
	if userSpec != "" {
		cred, err := credential(userSpec)
		if err != nil {
			return err
		}
		attr.Credential = cred
	}
	cmd.SysProcAttr = attr
	return nil
}

// credential turns "uid" or "uid:gid" into a credential; a lone uid runs with
// that user's primary group, or a group of the same number.
func credential(spec string) (*syscall.Credential, error) {
	uidText, gidText, hasGID := strings.Cut(spec, ":")
	uid, err := strconv.ParseUint(uidText, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %q: bad uid: %w", spec, err)
	}
	gid := uid
	if hasGID {
		if gid, err = strconv.ParseUint(gidText, 10, 32); err != nil {
			return nil, fmt.Errorf("user %q: bad gid: %w", spec, err)
		}
	} else if u, err := user.LookupId(uidText); err == nil {
		if g, err := strconv.ParseUint(u.Gid, 10, 32); err == nil {
			gid = g
		}
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func attach(cmd *exec.Cmd) (processGroup, error) {
	return processGroup{pgid: cmd.Process.Pid}, nil
}

func (g processGroup) terminate() { _ = syscall.Kill(-g.pgid, syscall.SIGTERM) }

func (g processGroup) kill() { _ = syscall.Kill(-g.pgid, syscall.SIGKILL) }

func (g processGroup) close() {}

func (g processGroup) usage(ps *os.ProcessState) (time.Duration, int64) {
	ru, ok := ps.SysUsage().(*syscall.Rusage)
	if !ok {
		return ps.UserTime() + ps.SystemTime(), 0
	}
	return ps.UserTime() + ps.SystemTime(), maxRSSBytes(ru)
}
