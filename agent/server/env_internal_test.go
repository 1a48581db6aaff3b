package server

import (
	"slices"
	"strings"
	"testing"
)

// On Windows a variable's name is case-insensitive: a stage's PATH replaces
// the machine's Path, a step's foo the stage's FOO; elsewhere they are
// different variables.
func TestMergeEnvFoldsCaseOnWindows(t *testing.T) {
	base := []string{"Path=C:\\Windows", "=C:=C:\\", "foo=agent", "Other=1"}
	stage := map[string]string{"PATH": "C:\\tools;C:\\Windows", "FOO": "stage"}
	step := map[string]string{"foo": "step"}
	got := mergeEnvFolding(true, base, stage, step)
	want := []string{"=C:=C:\\", "foo=step", "Other=1", "PATH=C:\\tools;C:\\Windows"}
	if !slices.Equal(got, want) {
		t.Errorf("windows: %q, want %q", got, want)
	}
	got = mergeEnvFolding(false, base, stage, step)
	want = []string{"=C:=C:\\", "FOO=stage", "Other=1", "PATH=C:\\tools;C:\\Windows", "Path=C:\\Windows", "foo=step"}
	if !slices.Equal(got, want) {
		t.Errorf("unix: %q, want %q", got, want)
	}
	// Two names of one layer that differ in case: the same one wins every time.
	for range 20 {
		if got := mergeEnvFolding(true, nil, map[string]string{"Key": "a", "KEY": "b", "key": "c"}); !slices.Equal(got, []string{"key=c"}) {
			t.Fatalf("one layer: %q", got)
		}
	}
}

// On Windows, ids that differ only in case, and ids that name devices, get
// files of their own; elsewhere an id is its own name.
func TestLocalNames(t *testing.T) {
	seen := map[string]string{}
	for _, id := range []string{"build", "Build", "BUILD", "CON", "con", "NUL", "COM1", "LPT9", "AUX", "PRN"} {
		name := localNameOn("windows", id)
		base := strings.ToUpper(name)
		if other, ok := seen[base]; ok {
			t.Errorf("%s and %s share the file name %s on Windows", id, other, name)
		}
		seen[base] = id
		if slices.Contains([]string{"CON", "NUL", "AUX", "PRN", "COM1", "LPT9"}, base) || !strings.HasPrefix(name, id+"-") {
			t.Errorf("%s is named %s on Windows", id, name)
		}
		if got := localNameOn("linux", id); got != id {
			t.Errorf("%s is named %s on Linux", id, got)
		}
	}
}
