package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/agent/agenttest"
	"github.com/slipway-ci/slipway/internal/delegate"
	"github.com/slipway-ci/slipway/internal/stage"
)

// TestLocalCommand runs `slipway local` as a user does, once on a machine
// where nothing runs (it starts DynamoDB Local and local-kms itself) and
// once given their endpoints: it comes up, a stage runs through it, and
// Ctrl-C (the context's end) stops everything it started, leaving no
// process behind.
func TestLocalCommand(t *testing.T) {
	bin := agenttest.BuildAgent(t)
	// One after the other: each judges the test's child processes.
	t.Run("own services", func(t *testing.T) {
		testLocalCommand(t, bin, "--dynamodb-endpoint", "", "--kms-endpoint", "")
	})
	t.Run("given endpoints", func(t *testing.T) {
		testLocalCommand(t, bin)
	})
}

func testLocalCommand(t *testing.T, bin string, flags ...string) {
	dir := filepath.Join(t.TempDir(), "rt")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &agenttest.Buffer{}
	done := make(chan error, 1)
	go func() {
		args := []string{"local", "--listen", "127.0.0.1:0", "--agent", bin, "--dir", dir, "--pool", "cli=1/2", "--tick", "1s"}
		done <- run(ctx, append(args, flags...), out)
	}()
	apiURL := ""
	for deadline := time.Now().Add(time.Minute); apiURL == ""; {
		select {
		case err := <-done:
			t.Fatalf("slipway local ended: %v\n%s", err, out.String())
		case <-time.After(100 * time.Millisecond):
		}
		if m := regexp.MustCompile(`delegate API\s+(http://\S+)`).FindStringSubmatch(out.String()); m != nil {
			apiURL = m[1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("slipway local did not come up:\n%s", out.String())
		}
	}
	if !strings.Contains(out.String(), "pools: cli (min idle 1, max 2)") {
		t.Errorf("the pools line is missing:\n%s", out.String())
	}
	api, err := delegate.New(apiURL, delegate.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := api.Create(ctx, &stage.Spec{ID: "cli-1", Pool: "cli", Groups: []stage.Group{{Final: true, Steps: []stage.Step{
		{ID: "hi", Step: agentapi.Step{Script: "echo hi"}},
	}}}}, 0); err != nil {
		t.Fatal(err)
	}
	st, err := api.Follow(ctx, "cli-1", nil)
	if err != nil || st.Result != stage.Succeeded {
		t.Fatalf("stage: %+v, %v", st, err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("slipway local after Ctrl-C: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("slipway local did not stop within 30 s")
	}
	if left := children(); len(left) > 0 {
		t.Errorf("processes left after Ctrl-C: %v", left)
	}
}

func TestLocalFlags(t *testing.T) {
	for _, bad := range []string{"x", "x=1", "x=a/2", "x=3/2", "Bad Name=1/2"} {
		var p poolFlags
		if err := p.Set(bad); err == nil {
			t.Errorf("--pool %q was accepted", bad)
		}
	}
	err := run(context.Background(), []string{"local", "--repo", t.TempDir()}, &agenttest.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "--repo") {
		t.Errorf("outside a checkout: %v", err)
	}
}

// children lists the command lines of this process's live children.
func children() []string {
	var found []string
	self := strconv.Itoa(os.Getpid())
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so read after ')'.
		fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(fields) < 2 || fields[1] != self || fields[0] == "Z" {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		found = append(found, e.Name()+": "+strings.ReplaceAll(string(cmdline), "\x00", " "))
	}
	return found
}
