package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/slipway-ci/slipway/internal/harness"
)

// runHarnessRunner is `slipway harness-runner`: the Harness delegate's VM
// runner API in front of a Slipway deployment, until interrupted.
func runHarnessRunner(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("slipway harness-runner", flag.ContinueOnError)
	var api apiFlags
	api.register(fs)
	listen := fs.String("listen", "127.0.0.1:3000", "where the delegate reaches the runner (its default port is 3000)")
	if err := parse(fs, args, 0); err != nil {
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
	runner := &harness.Runner{API: env.API, Log: logger}
	// No write timeout: /step answers when the step ends, however long.
	srv := &http.Server{Handler: runner.Handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute}
	logger.Info("harness-runner: serving the VM runner API", "listen", "http://"+ln.Addr().String(), "slipway", api.endpoint)
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
