package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/slipway-ci/slipway/internal/delegate"
	"github.com/slipway-ci/slipway/internal/harnessrunner"
)

// runHarnessRunner is `slipway harness-runner`: the Harness delegate's VM
// runner API in front of a Slipway deployment, until interrupted.
func runHarnessRunner(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("slipway harness-runner", flag.ContinueOnError)
	var api apiFlags
	api.register(fs)
	listen := fs.String("listen", "127.0.0.1:3000", "where the delegate reaches the runner (its default port is 3000)")
	var sec runnerSecurity
	fs.StringVar(&sec.certFile, "tls-cert", "", "serve HTTPS with this certificate (PEM); with --tls-key")
	fs.StringVar(&sec.keyFile, "tls-key", "", "the certificate's key (PEM)")
	fs.StringVar(&sec.tokenFile, "token-file", "", "require Authorization: Bearer <the file's content> on every call but /healthz")
	fs.StringVar(&sec.clientCAFile, "client-ca", "", "require client certificates signed by these CAs (PEM)")
	if err := parse(fs, args, 0, out); err != nil {
		return err
	}
	tlsConfig, guard, err := sec.load(*listen)
	if err != nil {
		return err
	}
	env, err := api.env(ctx, out)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(out, nil))
	runner := &harnessrunner.Runner{API: env.API, Log: logger}
	// No write timeout: /step answers when the step ends, however long.
	srv := &http.Server{Handler: guard(runner.Handler()), TLSConfig: tlsConfig, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute}
	scheme := "http"
	if tlsConfig != nil {
		scheme = "https"
		ln = tls.NewListener(ln, tlsConfig)
	}
	logger.Info("harness-runner: serving the VM runner API", "listen", scheme+"://"+ln.Addr().String(), "slipway", api.endpoint,
		"token", sec.tokenFile != "", "client_certificates", sec.clientCAFile != "")
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("harness-runner: %w", err)
	}
	return nil
}

// runnerSecurity is how the runner keeps callers out: the runner acts on
// the deployment with this machine's credentials, so it is an open proxy
// into the deployment to whoever reaches it. On loopback (beside the
// delegate, its RUNNER_URL default) that is the machine's own users; on any
// other address it needs TLS and a token or client certificates.
type runnerSecurity struct {
	certFile, keyFile, tokenFile, clientCAFile string
}

// load checks the settings for the address and reads their files: the TLS
// settings to serve with (nil: plain HTTP) and what wraps the runner's
// handler (the token check, where there is a token).
func (s *runnerSecurity) load(listen string) (*tls.Config, func(http.Handler) http.Handler, error) {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, nil, fmt.Errorf("harness-runner: --listen %q: %w", listen, err)
	}
	if (s.certFile == "") != (s.keyFile == "") {
		return nil, nil, errors.New("harness-runner: --tls-cert and --tls-key go together")
	}
	if s.clientCAFile != "" && s.certFile == "" {
		return nil, nil, errors.New("harness-runner: --client-ca needs --tls-cert and --tls-key")
	}
	if !delegate.IsLoopback(host) && (s.certFile == "" || (s.tokenFile == "" && s.clientCAFile == "")) {
		return nil, nil, fmt.Errorf("harness-runner: --listen %s is not a loopback address, and the runner acts on Slipway with this machine's credentials: "+
			"serve it with --tls-cert and --tls-key, and --token-file or --client-ca, or keep it on 127.0.0.1 beside the delegate (the delegate's RUNNER_URL default)", listen)
	}
	var tlsConfig *tls.Config
	if s.certFile != "" {
		cert, err := tls.LoadX509KeyPair(s.certFile, s.keyFile)
		if err != nil {
			return nil, nil, fmt.Errorf("harness-runner: --tls-cert and --tls-key: %w", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if s.clientCAFile != "" {
		pem, err := os.ReadFile(s.clientCAFile)
		if err != nil {
			return nil, nil, fmt.Errorf("harness-runner: --client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("harness-runner: --client-ca %s: no PEM certificate in it", s.clientCAFile)
		}
		tlsConfig.ClientCAs, tlsConfig.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	guard := func(h http.Handler) http.Handler { return h }
	if s.tokenFile != "" {
		data, err := os.ReadFile(s.tokenFile)
		if err != nil {
			return nil, nil, fmt.Errorf("harness-runner: --token-file: %w", err)
		}
		token := strings.TrimSpace(string(data))
		if len(token) < harnessrunner.MinTokenBytes {
			return nil, nil, fmt.Errorf("harness-runner: --token-file %s: the token has %d bytes, at least %d wanted", s.tokenFile, len(token), harnessrunner.MinTokenBytes)
		}
		guard = func(h http.Handler) http.Handler { return harnessrunner.RequireToken(token, h) }
	}
	return tlsConfig, guard, nil
}
