package executor

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestScriptArgv(t *testing.T) {
	tests := []struct {
		shell string
		want  []string
	}{
		{shell: "sh", want: []string{"sh", "-e", "-c", "echo hi"}},
		{shell: "bash", want: []string{"bash", "--noprofile", "--norc", "-e", "-o", "pipefail", "-c", "echo hi"}},
		{shell: "cmd", want: []string{"cmd.exe", "/D", "/E:ON", "/V:OFF", "/S", "/C", "echo hi"}},
	}
	for _, tt := range tests {
		if got := ScriptArgv(tt.shell, "echo hi"); !slices.Equal(got, tt.want) {
			t.Errorf("ScriptArgv(%q) = %q, want %q", tt.shell, got, tt.want)
		}
	}
	ps := ScriptArgv("pwsh", "Write-Output hi")
	if ps[0] != "pwsh" || !strings.Contains(ps[len(ps)-1], "$ErrorActionPreference = 'Stop'") || !strings.Contains(ps[len(ps)-1], "Write-Output hi") {
		t.Errorf("pwsh argv %q", ps)
	}
	if got := ScriptArgv("", "x")[0]; got != DefaultShell(runtime.GOOS) {
		t.Errorf("default shell %q", got)
	}
	if DefaultShell("windows") != "powershell" || DefaultShell("linux") != "sh" {
		t.Error("default shells")
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
