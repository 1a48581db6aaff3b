package main

import (
	"context"
	"flag"
	"io"

	"github.com/slipway-ci/slipway/internal/demo"
)

// runDemo is `slipway demo`: the system at work on this machine.
func runDemo(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("slipway demo", flag.ContinueOnError)
	agentPath := fs.String("agent", "bin/slipway-agent-linux-amd64", "agent binary to start")
	if err := parse(fs, args, 0, out); err != nil {
		return err
	}
	return demo.Run(ctx, out, *agentPath)
}
