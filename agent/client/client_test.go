package client_test

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
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
	for name, c := range map[string]*client.Client{"http/1.1": c, "multiplexed": c.Multiplexed()} {
		start := time.Now()
		_, err = c.Health(agenttest.Context(t))
		if err == nil || !strings.Contains(err.Error(), "another-vm.vm.slipway.internal") {
			t.Fatalf("%s: err %v, want a certificate name mismatch", name, err)
		}
		if time.Since(start) > time.Second {
			t.Fatalf("%s: a certificate error was retried", name)
		}
	}
}

// countingClient binds a's agent to the stage and returns a new client of
// it that counts its TLS handshakes: the client certificate is asked for
// once per connection.
func countingClient(t *testing.T, a *agenttest.Agent) (*client.Client, *atomic.Int64) {
	t.Helper()
	if _, err := a.Client.BindStage(agenttest.Context(t), &agentapi.Stage{ID: stageID}); err != nil {
		t.Fatal(err)
	}
	var handshakes atomic.Int64
	cert := a.ClientCert
	c, err := client.New(client.Config{
		Addr: a.Addr, LaunchID: agenttest.LaunchID, RootCAs: a.Roots,
		Certificate: func() (*tls.Certificate, error) {
			handshakes.Add(1)
			return &cert, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, &handshakes
}

// runSideBySide runs n steps of script at once through c, as a group's are.
func runSideBySide(t *testing.T, c *client.Client, n int, script string) {
	t.Helper()
	ctx := agenttest.Context(t)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			id := fmt.Sprintf("side-%d", i)
			st, err := c.RunStep(ctx, stageID, id, &agentapi.Step{Script: script, Env: map[string]string{"N": id}})
			if err != nil {
				t.Errorf("%s: %v", id, err)
			} else if st.State != agentapi.StepSucceeded {
				t.Errorf("%s: %s", id, st.State)
			}
		})
	}
	wg.Wait()
}

// A group's steps, started and long-polled side by side through
// Multiplexed on a new client, share one connection: one TLS handshake
// where HTTP/1.1 needs one per step. Lone calls keep to HTTP/1.1.
func TestGroupCallsShareOneConnection(t *testing.T) {
	a := agenttest.Start(t, server.Config{})
	ctx := agenttest.Context(t)
	c, handshakes := countingClient(t, a)
	runSideBySide(t, c.Multiplexed(), 20, "sleep 0.3")
	if n := handshakes.Load(); n != 1 {
		t.Errorf("%d TLS handshakes for 20 steps side by side, want 1", n)
	}
	if _, err := c.Health(ctx); err != nil {
		t.Fatal(err)
	}
	if n := handshakes.Load(); n != 2 {
		t.Errorf("%d TLS handshakes after a lone call, want 2 (its own HTTP/1.1 connection)", n)
	}
}

// An agent that offers only HTTP/1.1 (one started before HTTP/2) still
// serves a group: the multiplexed client's first calls, bodies and all,
// go over HTTP/1.1, and so do the later ones without another try.
func TestMultiplexedSpeaksHTTP1ToAnAgentWithoutIt(t *testing.T) {
	a := agenttest.StartHTTP1(t, server.Config{})
	ctx := agenttest.Context(t)
	c, handshakes := countingClient(t, a)
	runSideBySide(t, c.Multiplexed(), 5, "true")
	before := handshakes.Load()
	if _, err := c.Multiplexed().Health(ctx); err != nil {
		t.Fatal(err)
	}
	if n := handshakes.Load(); n != before {
		t.Errorf("a later call made %d new handshakes, want none: the agent's HTTP/1.1 was not remembered", n-before)
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

// A VM's agent is not trusted with its caller's memory: an answer over the
// bounds (a JSON answer, a log chunk) is an error, and is not read further.
func TestAnswersAreBounded(t *testing.T) {
	a := agenttest.Start(t, server.Config{}) // for its certificates
	tlsConfig, err := (&server.CertFiles{CertPath: a.CertPath, KeyPath: a.KeyPath, ClientCAPath: a.CACertPath}).TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tlsConfig)
	if err != nil {
		t.Fatal(err)
	}
	// A hostile agent answers every call with an endless body.
	var sent atomic.Int64
	endless := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		chunk := bytes.Repeat([]byte("a"), 64<<10)
		_, _ = w.Write([]byte(`{"id":"`))
		for sent.Load() < 256<<20 {
			n, err := w.Write(chunk)
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	srv := &http.Server{Handler: endless, ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	c, err := client.New(client.Config{
		Addr: ln.Addr().String(), LaunchID: agenttest.LaunchID, RootCAs: a.Roots,
		Certificate: client.StaticCertificate(a.ClientCert), Retries: 1, Backoff: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := agenttest.Context(t)
	var tooLarge *client.AnswerTooLargeError
	if _, err := c.StepStatus(ctx, "s", "x", 0); !errors.As(err, &tooLarge) || tooLarge.Limit != agentapi.MaxAnswerBytes {
		t.Fatalf("status: %v, want an answer over %d bytes", err, agentapi.MaxAnswerBytes)
	}
	if _, _, err := c.ReadLogs(ctx, "s", "x", 0, 0); !errors.As(err, &tooLarge) || tooLarge.Limit != agentapi.DefaultLogChunk {
		t.Fatalf("log chunk: %v, want an answer over %d bytes", err, agentapi.DefaultLogChunk)
	}
	if n := sent.Load(); n > 128<<20 {
		t.Fatalf("the client read on: the agent sent %d bytes", n)
	}
}
