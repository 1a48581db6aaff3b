package agenttest

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Alive says whether pid runs (a zombie has ended).
func Alive(pid int) bool {
	fields := statFields(strconv.Itoa(pid))
	return len(fields) > 0 && fields[0] != "Z"
}

// Children lists the command lines of pid's live children.
func Children(pid int) []string {
	parent := strconv.Itoa(pid)
	return processes(func(p string, fields []string, _ []byte) bool {
		return len(fields) > 1 && fields[1] == parent
	})
}

// ProcessesUnder lists the live processes whose command line names a path
// in dir: the agents of a local fleet, whose flags name their folders in it.
func ProcessesUnder(dir string) []string {
	return processes(func(_ string, _ []string, cmdline []byte) bool {
		return bytes.Contains(cmdline, []byte(dir+string(filepath.Separator)))
	})
}

// processes lists "pid: command line" of the live processes that match.
func processes(match func(pid string, stat []string, cmdline []byte) bool) []string {
	var found []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		fields := statFields(e.Name())
		if len(fields) == 0 || fields[0] == "Z" {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if match(e.Name(), fields, cmdline) {
			found = append(found, e.Name()+": "+strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
	return found
}

// statFields are the fields of /proc/<pid>/stat after the command name
// (state, ppid, ...); none when the process is gone or pid is not one. The
// name may hold spaces, so they are read after its closing ')'.
func statFields(pid string) []string {
	if _, err := strconv.Atoi(pid); err != nil {
		return nil
	}
	stat, err := os.ReadFile(filepath.Join("/proc", pid, "stat"))
	if err != nil {
		return nil
	}
	return strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
}
