package executor

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Cgroups puts each host step in a cgroup v2 of its own, under one folder of
// the agent's cgroup: a step's processes are all in it whatever they do
// (setsid, a cleared environment, a double fork), cgroup.kill ends every one
// of them, and cpu.stat and memory.peak measure the step alone.
type Cgroups struct {
	dir    string // this agent run's folder of step cgroups
	memory bool   // memory.peak is there to read
}

// Cgroup is one step's.
type Cgroup struct {
	dir string
	fd  int
}

// OpenCgroups finds the agent's own cgroup v2 and makes its folder of step
// cgroups, with the memory and cpu controllers where the agent may enable
// them. What an earlier, dead agent run left there is killed and removed.
// An error means cgroup v2 cannot be written here: the caller falls back
// to process groups.
func OpenCgroups(logger *slog.Logger) (*Cgroups, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	base, err := agentBase(logger)
	if err != nil {
		return nil, err
	}
	removeDeadRuns(base)
	var id [4]byte
	_, _ = rand.Read(id[:])
	dir := filepath.Join(base, fmt.Sprintf("slipway-%d-%s", os.Getpid(), hex.EncodeToString(id[:])))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cgroups: %w", err)
	}
	enableControllers(dir)
	// What a step's cgroup will have, asked once here rather than at each
	// step's start.
	c := &Cgroups{dir: dir}
	probe, err := c.New("probe")
	if err != nil {
		_ = os.Remove(dir)
		return nil, err
	}
	defer probe.Remove()
	if _, err := os.Stat(filepath.Join(probe.dir, "cgroup.kill")); err != nil {
		_ = os.Remove(dir)
		return nil, fmt.Errorf("cgroups: no cgroup.kill (Linux 5.14 or later): %w", err)
	}
	_, memErr := os.Stat(filepath.Join(probe.dir, "memory.peak"))
	c.memory = memErr == nil
	return c, nil
}

// New makes the cgroup of one step.
func (c *Cgroups) New(name string) (*Cgroup, error) {
	dir := filepath.Join(c.dir, strings.ReplaceAll(name, "/", "_"))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("step cgroup: %w", err)
	}
	fd, err := syscall.Open(dir, syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		_ = os.Remove(dir)
		return nil, fmt.Errorf("step cgroup: %w", err)
	}
	return &Cgroup{dir: dir, fd: fd}, nil
}

// Close removes this agent run's folder; its step cgroups are gone by then.
func (c *Cgroups) Close() { _ = os.Remove(c.dir) }

// Memory reports whether steps' peak memory is measured.
func (c *Cgroups) Memory() bool { return c.memory }

// Kill ends every process of the step.
func (g *Cgroup) Kill() {
	_ = os.WriteFile(filepath.Join(g.dir, "cgroup.kill"), []byte("1"), 0)
}

// Signal sends sig to every process of the step (a kill's polite first
// half: those that left the process group are asked too).
func (g *Cgroup) Signal(sig syscall.Signal) {
	data, _ := os.ReadFile(filepath.Join(g.dir, "cgroup.procs"))
	for _, line := range strings.Fields(string(data)) {
		if pid, err := strconv.Atoi(line); err == nil {
			_ = syscall.Kill(pid, sig)
		}
	}
}

// Usage is the CPU time of every process that ran in the step and its peak
// memory (0 where the memory controller is not the agent's to enable, and
// memory.peak is not there).
func (g *Cgroup) Usage() (time.Duration, int64) {
	var cpu time.Duration
	if data, err := os.ReadFile(filepath.Join(g.dir, "cpu.stat")); err == nil {
		for line := range strings.Lines(string(data)) {
			if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				cpu = time.Duration(n) * time.Microsecond
			}
		}
	}
	var peak int64
	if data, err := os.ReadFile(filepath.Join(g.dir, "memory.peak")); err == nil {
		peak, _ = strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	}
	return cpu, peak
}

// RemoveIfEmpty removes the cgroup if no process is left in it.
func (g *Cgroup) RemoveIfEmpty() {
	if g.fd >= 0 {
		_ = syscall.Close(g.fd)
		g.fd = -1
	}
	_ = os.Remove(g.dir) // EBUSY while a process is in it
}

// KillAll kills and removes every step cgroup, and reports how many still
// held processes.
func (c *Cgroups) KillAll() int {
	entries, _ := os.ReadDir(c.dir)
	n := 0
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		g := &Cgroup{dir: filepath.Join(c.dir, e.Name()), fd: -1}
		if procs, _ := os.ReadFile(filepath.Join(g.dir, "cgroup.procs")); len(bytes.TrimSpace(procs)) > 0 {
			n++
		}
		g.Remove()
	}
	return n
}

// Remove kills what is left and removes the cgroup, waiting briefly for
// the kernel to empty it.
func (g *Cgroup) Remove() {
	if g.fd >= 0 {
		_ = syscall.Close(g.fd)
		g.fd = -1
	}
	for i := 0; i < 50; i++ {
		if err := os.Remove(g.dir); err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		g.Kill()
		time.Sleep(10 * time.Millisecond)
	}
}

// base is the cgroup the agent process started in, found (and left for a
// leaf of it) once per process: every Cgroups of the process shares it.
var base struct {
	once sync.Once
	dir  string
	err  error
}

func agentBase(logger *slog.Logger) (string, error) {
	base.once.Do(func() {
		mount, err := cgroup2Mount()
		if err != nil {
			base.err = err
			return
		}
		own, err := ownCgroup()
		if err != nil {
			base.err = err
			return
		}
		base.dir = filepath.Join(mount, own)
		// Controllers for children can be enabled only in a cgroup without
		// processes of its own (the root excepted): under systemd the agent
		// is alone in its service's cgroup, so it moves into a leaf of it.
		if own != "/" {
			if err := moveSelf(filepath.Join(base.dir, "agent")); err != nil {
				logger.Warn("cgroups: stay in the service's cgroup", "err", err)
			}
		}
		enableControllers(base.dir)
	})
	return base.dir, base.err
}

func cgroup2Mount() (string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("cgroups: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		// ... mount-point ... - fstype source options
		pre, post, ok := strings.Cut(line, " - ")
		if !ok || !strings.HasPrefix(post, "cgroup2 ") {
			continue
		}
		if f := strings.Fields(pre); len(f) >= 5 {
			return f[4], nil
		}
	}
	return "", errors.New("cgroups: no cgroup2 file system mounted")
}

func ownCgroup() (string, error) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Errorf("cgroups: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p, nil
		}
	}
	return "", errors.New("cgroups: not in a cgroup v2")
}

func moveSelf(leaf string) error {
	if err := os.Mkdir(leaf, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return os.WriteFile(filepath.Join(leaf, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0)
}

// enableControllers enables what of memory and cpu dir's cgroup has for its
// children, each on its own (one may be refused and the other not).
func enableControllers(dir string) {
	data, _ := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	have := strings.Fields(string(data))
	for _, c := range []string{"memory", "cpu"} {
		if slices.Contains(have, c) {
			_ = os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+"+c), 0)
		}
	}
}

// removeDeadRuns kills and removes the step cgroups of agent runs whose
// process is gone (a crash, a restart).
func removeDeadRuns(base string) {
	entries, _ := os.ReadDir(base)
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), "slipway-")
		if !ok || !e.IsDir() {
			continue
		}
		pidText, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil || syscall.Kill(pid, 0) == nil {
			continue // not ours, or its agent lives
		}
		dead := &Cgroups{dir: filepath.Join(base, e.Name())}
		dead.KillAll()
		dead.Close()
	}
}
