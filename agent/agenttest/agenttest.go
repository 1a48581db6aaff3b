// Package agenttest starts real agents for tests and benchmarks: a fresh CA,
// server and client certificates, a TLS listener on 127.0.0.1 and a client
// that reaches it over mutual TLS.
package agenttest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	dockerclient "github.com/docker/docker/client"

	"github.com/slipway-ci/slipway/agent/client"
	"github.com/slipway-ci/slipway/agent/executor"
	"github.com/slipway-ci/slipway/agent/server"
	"github.com/slipway-ci/slipway/internal/busyboximage"
	"github.com/slipway-ci/slipway/internal/pki"
)

// LaunchID is the VM name in the test server certificate.
const LaunchID = "lt-test"

// PKI is a CA and the files an agent is started with.
type PKI struct {
	Dir                           string
	CA                            *pki.CA
	CACertPath, CertPath, KeyPath string
	ClientCertPath, ClientKeyPath string
	ClientCert                    tls.Certificate
	Roots                         *x509.CertPool
}

// NewPKI makes a CA in a temporary folder with a server certificate for
// LaunchID and an orchestrator client certificate.
func NewPKI(t testing.TB) *PKI {
	t.Helper()
	dir := t.TempDir()
	now := time.Now()
	ca, err := pki.InitDir(dir, 24*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	server, err := ca.IssueServerFiles(dir, LaunchID, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := ca.IssueClientFiles(dir, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(cl.CertPath, cl.KeyPath)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	return &PKI{
		Dir: dir, CA: ca,
		CACertPath: filepath.Join(dir, pki.CACertFile), CertPath: server.CertPath, KeyPath: server.KeyPath,
		ClientCertPath: cl.CertPath, ClientKeyPath: cl.KeyPath,
		ClientCert: cert, Roots: roots,
	}
}

// Agent is an agent served in-process over real mutual TLS.
type Agent struct {
	*PKI
	Addr   string
	Server *server.Server
	Client *client.Client
	// WorkRoot is the agent's work folder.
	WorkRoot string
}

// Start serves an agent with cfg (WorkRoot defaults to a temporary folder)
// until the test ends.
func Start(t testing.TB, cfg server.Config) *Agent {
	t.Helper()
	return start(t, cfg, nil)
}

// StartHTTP1 serves an agent that offers only HTTP/1.1 in its TLS
// handshake, as agents before HTTP/2 did.
func StartHTTP1(t testing.TB, cfg server.Config) *Agent {
	t.Helper()
	return start(t, cfg, []string{"http/1.1"})
}

// start serves an agent, with protos as the TLS handshake's protocols when
// given.
func start(t testing.TB, cfg server.Config, protos []string) *Agent {
	t.Helper()
	p := NewPKI(t)
	if cfg.WorkRoot == "" {
		cfg.WorkRoot = t.TempDir()
	}
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	certs := &server.CertFiles{CertPath: p.CertPath, KeyPath: p.KeyPath, ClientCAPath: p.CACertPath}
	tlsConfig, err := certs.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	if protos != nil {
		current := tlsConfig.GetConfigForClient
		tlsConfig.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			c, err := current(hello)
			if err != nil {
				return nil, err
			}
			c = c.Clone()
			c.NextProtos = protos
			return c, nil
		}
	}
	ln, err := server.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Refused handshakes are what some tests are about: not worth a line each.
	hs := server.HTTPServer(srv.Handler(), tlsConfig, log.New(io.Discard, "", 0))
	go func() {
		if err := hs.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	}()
	t.Cleanup(func() {
		srv.Shutdown()
		_ = hs.Close()
	})
	a := &Agent{PKI: p, Addr: ln.Addr().String(), Server: srv, WorkRoot: cfg.WorkRoot}
	a.Client = a.NewClient(t, a.Addr)
	return a
}

// NewClient returns a client of the agent's PKI for addr (the agent's, or a
// proxy's in front of it).
func (a *Agent) NewClient(t testing.TB, addr string) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{
		Addr: addr, LaunchID: LaunchID, RootCAs: a.Roots,
		Certificate: client.StaticCertificate(a.ClientCert),
		Backoff:     20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// Docker returns a client of the Docker engine in DOCKER_HOST with the
// busybox test image built. Without an engine the test fails in CI (where
// `make test` starts one) and is skipped elsewhere.
func Docker(t testing.TB) *dockerclient.Client {
	t.Helper()
	cli, err := executor.NewDockerClient()
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = cli.Ping(ctx)
		cancel()
	}
	if err != nil {
		msg := fmt.Sprintf("no Docker engine (%v): run `make test`, which starts dockerd, or start it with .ci/dockerd start and set DOCKER_HOST", err)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	t.Cleanup(func() { _ = cli.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := busyboximage.Ensure(ctx, cli); err != nil {
		t.Fatal(err)
	}
	return cli
}

// TLSConfig is a client configuration with the given certificates (none: no
// client certificate) that trusts the agent's CA and names its VM.
func (p *PKI) TLSConfig(certs ...tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		RootCAs:      p.Roots,
		ServerName:   pki.ServerName(LaunchID),
		Certificates: certs,
	}
}

// HTTPClient is a plain HTTP client with the orchestrator certificate, for
// requests the Go client would never send.
func (a *Agent) HTTPClient(t testing.TB) *http.Client {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: a.TLSConfig(a.ClientCert)}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// Process is an agent binary running as its own process.
type Process struct {
	*PKI
	Addr   string
	Client *client.Client
	Cmd    *exec.Cmd
}

// StartBinary runs the agent binary at path on a free loopback port with the
// test PKI and extra flags, and waits until it answers. It is stopped with
// SIGTERM when the test ends.
func StartBinary(t testing.TB, path string, extra ...string) *Process {
	t.Helper()
	return StartLaunched(t, path, Launch{Flags: extra})
}

// Launch says how an agent binary is started beyond the test PKI's flags.
type Launch struct {
	// Via is the command that runs the binary (the Wine launcher for a
	// Windows build); none runs it directly.
	Via []string
	// Env is added to the test's environment; Flags to the command line.
	Env, Flags []string
	// Healthy bounds the wait for the agent's first answer (default 15 s).
	Healthy time.Duration
}

// StartLaunched runs the agent binary at path as l says, on a free loopback
// port with the test PKI, and waits until it answers. It is stopped with
// SIGTERM when the test ends.
func StartLaunched(t testing.TB, path string, l Launch) *Process {
	t.Helper()
	p := NewPKI(t)
	addr := "127.0.0.1:" + FreePort(t)
	argv := append(slices.Clone(l.Via), path, "--addr", addr, "--tls-cert", p.CertPath, "--tls-key", p.KeyPath,
		"--client-ca", p.CACertPath, "--work-dir", filepath.Join(p.Dir, "work"))
	cmd := exec.Command(argv[0], append(argv[1:], l.Flags...)...)
	cmd.Env = append(os.Environ(), l.Env...)
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	healthy := l.Healthy
	if healthy == 0 {
		healthy = 15 * time.Second
	}
	a := &Agent{PKI: p}
	proc := &Process{PKI: p, Addr: addr, Client: a.NewClient(t, addr), Cmd: cmd}
	if _, err := proc.Client.WaitHealthy(context.Background(), healthy, 50*time.Millisecond); err != nil {
		t.Fatalf("agent at %s: %v", addr, err)
	}
	return proc
}

var agentBuilds struct {
	sync.Mutex
	paths map[string]string // by build arguments
}

// BuildAgent builds the agent binary (static, so it also runs in the busybox
// image) once per test process and returns its path.
func BuildAgent(t testing.TB) string {
	t.Helper()
	return BuildAgentWith(t, nil)
}

// BuildAgentWith builds the agent with env added to go build's environment
// (GOOS, GOARCH) and flags before the package, once per test process for
// each, and returns its path.
func BuildAgentWith(t testing.TB, env []string, flags ...string) string {
	t.Helper()
	b := &agentBuilds
	b.Lock()
	defer b.Unlock()
	key := fmt.Sprint(env, flags)
	if path, ok := b.paths[key]; ok {
		return path
	}
	dir, err := os.MkdirTemp("", "slipway-agent-")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "slipway-agent")
	if slices.Contains(env, "GOOS=windows") {
		path += ".exe"
	}
	cmd := exec.Command("go", append(append([]string{"build", "-o", path}, flags...), "github.com/slipway-ci/slipway/agent")...)
	cmd.Env = append(append(os.Environ(), "CGO_ENABLED=0"), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the agent (%s): %v\n%s", key, err, out)
	}
	if b.paths == nil {
		b.paths = map[string]string{}
	}
	b.paths[key] = path
	return path
}

// Context is a context that ends with the test, or after two minutes.
func Context(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// Orchestrator is the functions' identity towards agents of a CA: a
// short-lived orchestrator client certificate, and the CA as root.
type Orchestrator struct {
	Roots       *x509.CertPool
	Certificate func() (*tls.Certificate, error)
}

// NewOrchestrator issues an orchestrator certificate from ca.
func NewOrchestrator(t testing.TB, ca *pki.CA) Orchestrator {
	t.Helper()
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueClient(key.Public(), time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	return Orchestrator{Roots: roots, Certificate: client.StaticCertificate(tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key})}
}

// Client returns a client of the agent of the VM launchID at addr.
func (o Orchestrator) Client(t testing.TB, addr, launchID string) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{Addr: addr, LaunchID: launchID, RootCAs: o.Roots, Certificate: o.Certificate})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// FreePort is a loopback TCP port nothing listened on a moment ago.
func FreePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

// Until polls cond every 50 ms for at most within, and fails the test when
// it never held.
func Until(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
