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

// processGroup is the step's process group (its id is the main process's
// pid) and, where there is one, its cgroup.
type processGroup struct {
	pgid int
	cg   *Cgroup
}

func prepare(cmd *exec.Cmd, userSpec string, cg *Cgroup) error {
	attr := &syscall.SysProcAttr{Setpgid: true}
	startIn(attr, cg)
	if userSpec != "" {
		cred, err := Credential(userSpec)
		if err != nil {
			return err
		}
		attr.Credential = cred
	}
	cmd.SysProcAttr = attr
	return nil
}

// Credential turns "uid" or "uid:gid" into the credential a step runs with;
// a lone uid runs with that user's primary group, or a group of the same
// number.
func Credential(spec string) (*syscall.Credential, error) {
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

func attach(cmd *exec.Cmd, cg *Cgroup) (processGroup, error) {
	return processGroup{pgid: cmd.Process.Pid, cg: cg}, nil
}

func (g processGroup) terminate() {
	_ = syscall.Kill(-g.pgid, syscall.SIGTERM)
	if g.cg != nil {
		g.cg.Signal(syscall.SIGTERM)
	}
}

func (g processGroup) killGroup() { _ = syscall.Kill(-g.pgid, syscall.SIGKILL) }

func (g processGroup) killAll() {
	g.killGroup()
	if g.cg != nil {
		g.cg.Kill()
	}
}

// close removes the step's cgroup once it is empty; one still holding a
// daemon stays for the stage's KillLeftovers.
func (g processGroup) close() {
	if g.cg != nil {
		g.cg.RemoveIfEmpty()
	}
}

// usage is the step's CPU time and peak memory: its cgroup's, where it has
// one (every process it ran, escaped ones too; memory where the memory
// controller is the agent's), else what the main process's wait reports:
// its CPU and its children's, and no memory figure, since a child forked
// from the agent reports the agent's own peak as its maxrss.
func (g processGroup) usage(ps *os.ProcessState) (time.Duration, int64) {
	cpu := ps.UserTime() + ps.SystemTime()
	if g.cg == nil {
		return cpu, 0
	}
	cgCPU, peak := g.cg.Usage()
	return max(cpu, cgCPU), peak
}
