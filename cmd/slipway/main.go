// Command slipway is Slipway's command line: the PKI helper and the demo, and
// `slipway local`, a whole deployment on this machine.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `usage: slipway <command> [flags]

commands:
  pki init --dir DIR                     create a CA in DIR (ca.crt, ca.key)
  pki issue server --dir DIR --name ID   issue ID.crt/ID.key: the server certificate of the VM with launch id ID
  pki issue client --dir DIR             issue client.crt/client.key: an orchestrator client certificate
  stage run|status|logs|cancel           run and watch stages through the delegate API (slipway stage for more)
  pools [--endpoint URL]                 every pool's depth: idle, provisioning, leased, max, warm target
  pools check FILE                       check a pools file and list its pools
  pools import FILE                      convert a drone-runner-aws pool file; notes on stderr
  local [--listen ADDR] [--pool N=MIN/MAX]
                                         run a whole deployment on this machine: the delegate API, the
                                         functions, the state machine on a local ASL engine, local VMs
  harness-runner [--listen ADDR] [--endpoint URL]
                                         the Harness delegate's VM runner API (drone-runner-aws) in
                                         front of Slipway: point the delegate's runner URL at it
  demo [--agent PATH]                    start a local agent and run a few steps through it, then
                                         stages through slipway local
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if errors.Is(err, errHelp) {
		return
	}
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(2)
	}
	var exit *exitError
	if errors.As(err, &exit) {
		if exit.err != nil {
			fmt.Fprintln(os.Stderr, "slipway:", exit.err)
		}
		os.Exit(exit.code)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "slipway:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return flag.ErrHelp
	}
	switch args[0] {
	case "pki":
		return runPKI(args[1:], out)
	case "pools":
		if len(args) > 1 && (args[1] == "check" || args[1] == "import") {
			return runPools(args[1:], out)
		}
		return runPoolsTable(ctx, args[1:], out)
	case "stage":
		return runStage(ctx, args[1:], out)
	case "local":
		return runLocal(ctx, args[1:], out)
	case "demo":
		return runDemo(ctx, args[1:], out)
	case "harness-runner":
		return runHarnessRunner(ctx, args[1:], out)
	case "help", "-h", "--help":
		fmt.Fprint(out, usage)
		return nil
	default:
		fmt.Fprint(os.Stderr, usage)
		return fmt.Errorf("unknown command %q", args[0])
	}
}
