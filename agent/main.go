// Command slipway-agent is Slipway's agent: the HTTPS server with mutual TLS
// that runs on every build VM and runs a stage's steps as host processes or
// docker containers.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/slipway-ci/slipway/agent/executor"
	"github.com/slipway-ci/slipway/agent/server"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type options struct {
	addr, certPath, keyPath, clientCAPath, workDir string
	maxLogBytes                                    int64
	docker                                         string
	procs                                          int
}

func main() {
	if err := runAsService(run); err != nil {
		fmt.Fprintln(os.Stderr, "slipway-agent:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("slipway-agent", flag.ContinueOnError)
	var o options
	fs.StringVar(&o.addr, "addr", envOr("SLIPWAY_AGENT_ADDR", ":9079"), "address to listen on (env SLIPWAY_AGENT_ADDR)")
	fs.StringVar(&o.certPath, "tls-cert", os.Getenv("SLIPWAY_AGENT_TLS_CERT"), "server certificate, PEM (env SLIPWAY_AGENT_TLS_CERT)")
	fs.StringVar(&o.keyPath, "tls-key", os.Getenv("SLIPWAY_AGENT_TLS_KEY"), "server key, PEM (env SLIPWAY_AGENT_TLS_KEY)")
	fs.StringVar(&o.clientCAPath, "client-ca", os.Getenv("SLIPWAY_AGENT_CLIENT_CA"), "CA that signs orchestrator client certificates, PEM (env SLIPWAY_AGENT_CLIENT_CA)")
	fs.StringVar(&o.workDir, "work-dir", envOr("SLIPWAY_AGENT_WORK_DIR", defaultWorkDir()), "folder for stage workspaces and step logs (env SLIPWAY_AGENT_WORK_DIR)")
	maxLog := envOr("SLIPWAY_AGENT_MAX_LOG_BYTES", "536870912")
	fs.StringVar(&maxLog, "max-log-bytes", maxLog, "bytes of log kept per step (env SLIPWAY_AGENT_MAX_LOG_BYTES)")
	fs.StringVar(&o.docker, "docker", envOr("SLIPWAY_AGENT_DOCKER", "auto"), "container steps: auto (if the engine answers), on, off (env SLIPWAY_AGENT_DOCKER)")
	procs := envOr("SLIPWAY_AGENT_PROCS", "1")
	fs.StringVar(&procs, "procs", procs, "CPUs the agent's own code runs on at once (GOMAXPROCS; env SLIPWAY_AGENT_PROCS)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	var errs []error
	n, err := strconv.ParseInt(maxLog, 10, 64)
	if err != nil || n <= 0 {
		errs = append(errs, fmt.Errorf("--max-log-bytes %q: want a positive number of bytes", maxLog))
	}
	o.maxLogBytes = n
	if o.procs, err = strconv.Atoi(procs); err != nil || o.procs < 1 || o.procs > 256 {
		errs = append(errs, fmt.Errorf("--procs %q: want 1 to 256", procs))
	}
	for flagName, v := range map[string]string{"--tls-cert": o.certPath, "--tls-key": o.keyPath, "--client-ca": o.clientCAPath} {
		if v == "" {
			errs = append(errs, fmt.Errorf("%s is required", flagName))
		}
	}
	if o.docker != "auto" && o.docker != "on" && o.docker != "off" {
		errs = append(errs, fmt.Errorf("--docker %q: want auto, on or off", o.docker))
	}
	return o, errors.Join(errs...)
}

func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

// run serves until ctx ends, then stops the running steps and shuts down.
func run(ctx context.Context, args []string) error {
	logger := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	// The executor logs what has no step to report it to (a CTRL_BREAK that
	// could not be sent) through the default logger.
	slog.SetDefault(logger)
	o, err := parseFlags(args)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The cores are the build's. One is plenty for serving the API and
	// pumping output (450 MB/s masked), and with one the runtime hands less
	// work between threads: a step's round trip is ~10% faster than with
	// every core. An explicit GOMAXPROCS in the environment wins.
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(o.procs)
	}

	certs := &server.CertFiles{CertPath: o.certPath, KeyPath: o.keyPath, ClientCAPath: o.clientCAPath, Logger: logger}
	tlsConfig, err := certs.TLSConfig()
	if err != nil {
		return err
	}
	cfg := server.Config{
		WorkRoot:    o.workDir,
		MaxLogBytes: o.maxLogBytes,
		Version:     version,
		BaseEnv:     os.Environ(),
		Logger:      logger,
	}
	if cfg.Docker, err = dockerExecutor(ctx, o.docker, logger); err != nil {
		return err
	}
	srv, err := server.New(cfg)
	if err != nil {
		return err
	}
	ln, err := server.Listen(o.addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	httpServer := server.HTTPServer(srv.Handler(), tlsConfig, slog.NewLogLogger(logger.Handler(), slog.LevelWarn))
	logger.Info("agent listening", "addr", ln.Addr().String(), "version", version, "boot_id", srv.BootID(), "docker", cfg.Docker != nil)
	errc := make(chan error, 1)
	go func() { errc <- httpServer.ServeTLS(ln, "", "") }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	logger.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	srv.Shutdown()
	_ = httpServer.Shutdown(shutdownCtx)
	return nil
}

func dockerExecutor(ctx context.Context, mode string, logger *slog.Logger) (executor.Executor, error) {
	if mode == "off" {
		return nil, nil
	}
	cli, err := executor.NewDockerClient()
	if err == nil {
		pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = cli.Ping(pingCtx)
		cancel()
	}
	if err != nil {
		if mode == "on" {
			return nil, fmt.Errorf("docker: %w", err)
		}
		logger.Warn("docker unreachable: container steps are refused", "err", err)
		return nil, nil
	}
	return &executor.Docker{API: cli}, nil
}
