package executor

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestScriptCommand(t *testing.T) {
	dir := filepath.Join("C:", "work", "stage", "steps", "build.outputs")
	for _, tt := range []struct {
		shell string
		want  []string
	}{
		{shell: "sh", want: []string{"sh", "-e", "-c", "echo hi"}},
		{shell: "bash", want: []string{"bash", "--noprofile", "--norc", "-e", "-o", "pipefail", "-c", "echo hi"}},
	} {
		if got := ScriptCommand("linux", tt.shell, "echo hi", dir); !slices.Equal(got.Argv, tt.want) || got.File != "" {
			t.Errorf("%s: %+v, want %q on the command line", tt.shell, got, tt.want)
		}
	}
	// cmd: every line of the script runs, from a file, CRLF-ended, its path
	// the last argument as it is (nothing for Windows' quoting to escape).
	script := "echo \"a b\"\nset X=1\r\nexit 4"
	c := ScriptCommand("windows", "cmd", script, dir)
	if want := []string{"cmd.exe", "/D", "/E:ON", "/V:OFF", "/C", filepath.Join(dir, "script.cmd")}; !slices.Equal(c.Argv, want) || c.File != want[5] {
		t.Errorf("cmd argv %q, file %q", c.Argv, c.File)
	}
	if got := string(c.Data); got != "@echo off\r\necho \"a b\"\r\nset X=1\r\nexit 4\r\n" {
		t.Errorf("cmd script %q", got)
	}
	for _, arg := range c.Argv {
		if strings.Contains(arg, "\"") {
			t.Errorf("a cmd argument with a quote: %q", arg)
		}
	}
	// PowerShell: from a .ps1 with a byte order mark, stopping at the first
	// error, exiting with the last native command's code.
	for goos, exe := range map[string]string{"windows": "powershell.exe", "linux": "powershell"} {
		p := ScriptCommand(goos, "", "Write-Output \"a b\"\nexit 3", dir)
		if goos == "linux" {
			p = ScriptCommand(goos, "powershell", "Write-Output \"a b\"\nexit 3", dir)
		}
		if p.Argv[0] != exe || p.Argv[len(p.Argv)-2] != "-File" || p.Argv[len(p.Argv)-1] != filepath.Join(dir, "script.ps1") {
			t.Errorf("%s powershell argv %q", goos, p.Argv)
		}
		data := string(p.Data)
		if !strings.HasPrefix(data, "\ufeff$ErrorActionPreference = 'Stop'\n") || !strings.Contains(data, "Write-Output \"a b\"\nexit 3\n") ||
			!strings.HasSuffix(data, "{ exit $LASTEXITCODE }\n") {
			t.Errorf("%s powershell script %q", goos, data)
		}
	}
	if DefaultShell("windows") != "powershell" || DefaultShell("linux") != "sh" {
		t.Error("default shells")
	}
	if got := ScriptCommand("linux", "", "x", dir).Argv[0]; got != "sh" {
		t.Errorf("default shell on linux %q", got)
	}
}

func TestProcessRefusesAnEmptyCommand(t *testing.T) {
	if _, err := (&Process{}).Start(context.Background(), Spec{}); !errors.Is(err, ErrNoCommand) {
		t.Fatalf("err %v, want ErrNoCommand", err)
	}
}

func TestProcessOutputAndResult(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("uses sh")
	}
	var out bytes.Buffer
	h, err := (&Process{}).Start(context.Background(), Spec{
		Argv: []string{"sh", "-c", "echo $GREETING; pwd; exit 4"}, Env: []string{"GREETING=hi"}, Dir: "/", Output: &out,
	})
	if err != nil {
		t.Fatal(err)
	}
	res := h.Wait()
	if res.ExitCode != 4 || res.Err != nil {
		t.Fatalf("result %+v", res)
	}
	if out.String() != "hi\n/\n" {
		t.Fatalf("output %q", out.String())
	}
	if again := h.Wait(); again.ExitCode != 4 {
		t.Fatal("second Wait differs")
	}
	h.Stop(time.Second) // after the end: a no-op
}
