//go:build unix

package stepfile_test

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/slipway-ci/slipway/agent/stepfile"
)

func TestOpenRefusesWhatIsNotTheStepsFile(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "root-only")
	if err := os.WriteFile(outside, []byte("shadow\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name, data string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("out", "A=1\n")
	if err := os.Symlink(outside, filepath.Join(dir, "link-out")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("out", filepath.Join(dir, "link-beside")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "folder"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"out": "A=1\n", "link-beside": "A=1\n"} {
		f, err := stepfile.OpenPath(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		data, _ := io.ReadAll(f)
		f.Close()
		if string(data) != want {
			t.Fatalf("%s: %q", name, data)
		}
	}
	// A link out of the folder is refused; a FIFO is refused at once (the
	// test would hang otherwise), a folder too.
	for _, name := range []string{"link-out", "fifo", "folder"} {
		f, err := stepfile.OpenPath(filepath.Join(dir, name))
		if err == nil {
			f.Close()
			t.Fatalf("%s: opened", name)
		}
		if name != "link-out" && !errors.Is(err, stepfile.ErrNotRegular) {
			t.Fatalf("%s: %v, want not a regular file", name, err)
		}
	}
}
