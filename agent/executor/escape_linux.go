package executor

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
)

// KillMarked kills every process whose environment, as it was exec'd,
// holds the entry marker (KEY=VALUE). A process that left its step's
// process group (setsid, a daemon) still carries the environment it was
// started with, so this finds what the group kill missed. It returns how
// many processes it killed.
func KillMarked(marker string) int {
	if marker == "" {
		return 0
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	want := []byte(marker)
	self := os.Getpid()
	killed := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil {
			continue // gone meanwhile, or not ours to read
		}
		for _, entry := range bytes.Split(env, []byte{0}) {
			if bytes.Equal(entry, want) {
				if syscall.Kill(pid, syscall.SIGKILL) == nil {
					killed++
				}
				break
			}
		}
	}
	return killed
}
