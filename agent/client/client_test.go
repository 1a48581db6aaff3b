package client_test

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/agent/agenttest"
	"github.com/slipway-ci/slipway/agent/client"
	"github.com/slipway-ci/slipway/agent/server"
)

const stageID = "stage-c"

// cuttingProxy forwards TCP to target and cuts each connection after it has
// carried about cutAfter bytes from the server: a network that breaks
// mid-stream, again and again.
type cuttingProxy struct {
	ln       net.Listener
	target   string
	cutAfter int64
	cuts     atomic.Int64
}

func newCuttingProxy(t *testing.T, target string, cutAfter int64) *cuttingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cuttingProxy{ln: ln, target: target, cutAfter: cutAfter}
	t.Cleanup(func() { ln.Close() })
	go p.serve()
	return p
}

func (p *cuttingProxy) serve() {
	for {
		down, err := p.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer down.Close()
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				return
			}
			defer up.Close()
			go func() { _, _ = io.Copy(up, down) }()
			n, _ := io.CopyN(down, up, p.cutAfter)
			if n == p.cutAfter {
				p.cuts.Add(1)
			}
		}()
	}
}

func TestStreamLogsResumesAfterDisconnects(t *testing.T) {
	a := agenttest.Start(t, server.Config{})
	ctx := agenttest.Context(t)
	if _, err := a.Client.BindStage(ctx, &agentapi.Stage{ID: stageID}); err != nil {
		t.Fatal(err)
	}
	// About 6.9 MB of numbered lines, printed over about a second so that the
	// stream is followed live, not read after the fact.
	script := "i=0; while [ $i -lt 20 ]; do seq $((i*40000+1)) $((i*40000+40000)); i=$((i+1)); sleep 0.05; done"
	if _, err := a.Client.StartStep(ctx, stageID, "numbers", &agentapi.Step{Script: script}); err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for i := 1; i <= 800000; i++ {
		fmt.Fprintf(&want, "%d\n", i)
	}

	proxy := newCuttingProxy(t, a.Addr, 300<<10)
	flaky := a.NewClient(t, proxy.ln.Addr().String())
	h := sha256.New()
	n, err := flaky.StreamLogs(ctx, stageID, "numbers", 0, h)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(want.Len()) {
		t.Fatalf("streamed %d bytes, want %d", n, want.Len())
	}
	if got, wantSum := fmt.Sprintf("%x", h.Sum(nil)), fmt.Sprintf("%x", sha256.Sum256([]byte(want.String()))); got != wantSum {
		t.Fatalf("checksum %s, want %s: bytes lost or doubled", got, wantSum)
	}
	if proxy.cuts.Load() < 5 {
		t.Fatalf("only %d connections were cut: the test did not test resumption", proxy.cuts.Load())
	}
}

func TestReadLogsInChunks(t *testing.T) {
	a := agenttest.Start(t, server.Config{})
	ctx := agenttest.Context(t)
	if _, err := a.Client.BindStage(ctx, &agentapi.Stage{ID: stageID}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Client.RunStep(ctx, stageID, "s", &agentapi.Step{Script: "seq 1 1000"}); err != nil {
		t.Fatal(err)
	}
	var got []byte
	for done := false; !done; {
		chunk, d, err := a.Client.ReadLogs(ctx, stageID, "s", int64(len(got)), 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(chunk) > 1000 {
			t.Fatalf("chunk of %d bytes over the limit", len(chunk))
		}
		got, done = append(got, chunk...), d
	}
	if !strings.HasPrefix(string(got), "1\n2\n") || !strings.HasSuffix(string(got), "999\n1000\n") || len(got) != 3893 {
		t.Fatalf("read %d bytes", len(got))
	}
}

func TestRetriesOnlyConnectionErrors(t *testing.T) {
	a := agenttest.Start(t, server.Config{})
	ctx := agenttest.Context(t)

	// An HTTP answer, even an error, is never retried.
	var apiErr *client.APIError
	_, err := a.Client.StepStatus(ctx, "not-bound", "s", 0)
	if !errors.As(err, &apiErr) || apiErr.Code != agentapi.CodeNotBound {
		t.Fatalf("err %v, want not_bound", err)
	}

	// A port that refuses connections now and accepts later: the client
	// keeps trying with backoff until it does.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c, err := client.New(client.Config{
		Addr: addr, LaunchID: agenttest.LaunchID, RootCAs: a.Roots,
		Certificate: client.StaticCertificate(a.ClientCert), Retries: 10, Backoff: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var wg sync.WaitGroup
	wg.Go(func() {
		time.Sleep(100 * time.Millisecond)
		proxy, err := net.Listen("tcp", addr)
		if err != nil {
			t.Error(err)
			return
		}
		t.Cleanup(func() { proxy.Close() })
		go func() {
			for {
				down, err := proxy.Accept()
				if err != nil {
					return
				}
				up, err := net.Dial("tcp", a.Addr)
				if err != nil {
					return
				}
				go func() { _, _ = io.Copy(up, down) }()
				go func() { _, _ = io.Copy(down, up) }()
			}
		}()
	})
	h, err := c.Health(ctx)
	wg.Wait()
	if err != nil {
		t.Fatalf("health through a late listener: %v", err)
	}
	if h.BootID == "" {
		t.Fatal("no boot id")
	}
}

func TestRefusesAServerNamedForAnotherVM(t *testing.T) {
	a := agenttest.Start(t, server.Config{})
	c, err := client.New(client.Config{
		Addr: a.Addr, LaunchID: "another-vm", RootCAs: a.Roots,
		Certificate: client.StaticCertificate(a.ClientCert),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	_, err = c.Health(agenttest.Context(t))
	if err == nil || !strings.Contains(err.Error(), "another-vm.vm.slipway.internal") {
		t.Fatalf("err %v, want a certificate name mismatch", err)
	}
	if time.Since(start) > time.Second {
		t.Fatal("a certificate error was retried")
	}
}

func TestWaitStepNoticesARestartedAgent(t *testing.T) {
	a := agenttest.Start(t, server.Config{})
	ctx := agenttest.Context(t)
	if _, err := a.Client.BindStage(ctx, &agentapi.Stage{ID: stageID}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Client.StartStep(ctx, stageID, "s", &agentapi.Step{Script: "true"}); err != nil {
		t.Fatal(err)
	}
	_, err := a.Client.WaitStep(ctx, stageID, "s", "boot-id-of-an-earlier-run", time.Second)
	if !errors.Is(err, client.ErrAgentRestarted) {
		t.Fatalf("err %v, want ErrAgentRestarted", err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	a := agenttest.Start(t, server.Config{})
	good := client.Config{Addr: a.Addr, LaunchID: "vm", RootCAs: a.Roots, Certificate: client.StaticCertificate(a.ClientCert)}
	tests := []struct {
		name   string
		modify func(*client.Config)
	}{
		{name: "bad launch id", modify: func(c *client.Config) { c.LaunchID = "a/b" }},
		{name: "no port", modify: func(c *client.Config) { c.Addr = "127.0.0.1" }},
		{name: "no roots", modify: func(c *client.Config) { c.RootCAs = nil }},
		{name: "no certificate", modify: func(c *client.Config) { c.Certificate = nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.modify(&cfg)
			if _, err := client.New(cfg); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}
