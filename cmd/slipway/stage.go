package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"syscall"

	"github.com/aws/aws-sdk-go-v2/config"
	"golang.org/x/term"

	"github.com/slipway-ci/slipway/internal/delegate"
	"github.com/slipway-ci/slipway/internal/stagecli"
)

// EnvEndpoint names the delegate API's URL for the stage commands.
const EnvEndpoint = "SLIPWAY_ENDPOINT"

// exitError carries a command's exit code to main.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit code %d", e.code)
	}
	return e.err.Error()
}

// apiFlags are the flags every command of the delegate API takes.
type apiFlags struct {
	endpoint, output, region, as string
}

func (f *apiFlags) register(fs *flag.FlagSet) {
	def := os.Getenv(EnvEndpoint)
	if def == "" {
		def = "http://127.0.0.1:8079"
	}
	fs.StringVar(&f.endpoint, "endpoint", def, "the delegate API (default $"+EnvEndpoint+", else slipway local's); API Gateway endpoints are signed with SigV4")
	fs.StringVar(&f.output, "output", "text", "text, or json for scripts")
	fs.StringVar(&f.region, "region", "", "the endpoint's region (default: from an execute-api host name)")
	fs.StringVar(&f.as, "as", "", "slipway local only: call as this role (a name, or an ARN), to see how tenants are kept apart")
}

// env connects to the API. Only an endpoint that is not loopback reads the
// AWS configuration, for its credentials.
func (f *apiFlags) env(ctx context.Context, out io.Writer) (*stagecli.Env, error) {
	if f.output != "text" && f.output != "json" {
		return nil, &stagecli.UsageError{Err: fmt.Errorf("--output %q: want text or json", f.output)}
	}
	o := delegate.Options{Region: f.region, As: f.as}
	if u, err := url.Parse(f.endpoint); err == nil && !delegate.IsLoopback(u.Hostname()) {
		cfg, err := config.LoadDefaultConfig(ctx)
		if err != nil {
			return nil, fmt.Errorf("AWS configuration for signing: %w", err)
		}
		o.Credentials = cfg.Credentials
		if o.Region == "" && cfg.Region != "" && !strings.Contains(u.Hostname(), ".execute-api.") {
			o.Region = cfg.Region
		}
	}
	api, err := delegate.New(f.endpoint, o)
	if err != nil {
		return nil, &stagecli.UsageError{Err: err}
	}
	live := false
	if f, ok := out.(*os.File); ok {
		live = term.IsTerminal(int(f.Fd()))
	}
	return &stagecli.Env{API: api, Out: out, JSON: f.output == "json", Live: live, Getenv: os.Getenv}, nil
}

// repeated is a flag given any number of times.
type repeated []string

func (r *repeated) String() string     { return strings.Join(*r, ",") }
func (r *repeated) Set(v string) error { *r = append(*r, v); return nil }

const stageUsage = `usage: slipway stage <command> [flags]

  run --pool P --step 'cmd' [--step 'cmd' ...] | --file stage.yaml  [--env K=V] [--secret NAME=env:VAR] [--id ID] [--timeout 1h]
        run a stage, following its logs; exit code 0 succeeded, 1 failed, 2 canceled or timed out, 3 error
  status ID            a stage's phase, result, steps and timings
  logs ID STEP [-f]    a step's log (-f: until the step ends)
  cancel ID [--wait]   cancel a stage (--wait: until its VM is released)
  list [--since 24h] [--pool P] [--limit 20]
                       the recent stages, newest first

every command: --endpoint URL (default $SLIPWAY_ENDPOINT), --output text|json, --region R, --as NAME (slipway local only: call as that role)
`

func runStage(ctx context.Context, args []string, out io.Writer) error {
	if len(args) == 0 {
		return &exitError{stagecli.ExitError, errors.New(strings.TrimSpace(stageUsage))}
	}
	fs := flag.NewFlagSet("slipway stage "+args[0], flag.ContinueOnError)
	var api apiFlags
	api.register(fs)
	switch args[0] {
	case "run":
		var o stagecli.RunOptions
		var steps, envs, secrets repeated
		timeout := fs.Duration("timeout", 0, "the stage's timeout (default the API's, 1h)")
		fs.StringVar(&o.ID, "id", "", "the stage's id (default: run-<time>-<random>)")
		fs.StringVar(&o.Pool, "pool", "", "the pool to run on (overrides the file's)")
		fs.StringVar(&o.File, "file", "", "a stage file (stage.yaml: the API's stage in YAML) instead of --step")
		fs.Var(&steps, "step", "a shell command, run as a step of its own; repeatable, in order")
		fs.Var(&envs, "env", "NAME=value for every step; repeatable")
		fs.Var(&secrets, "secret", "NAME=env:VARIABLE: a secret from the environment, masked in logs; repeatable")
		if err := parse(fs, args[1:], 0, out); err != nil {
			return err
		}
		o.Steps, o.Env, o.Secrets, o.TimeoutSeconds = steps, envs, secrets, int64(timeout.Seconds())
		e, err := api.env(ctx, out)
		if err != nil {
			return &exitError{stagecli.ExitError, err}
		}
		spec, err := o.Spec(os.Getenv)
		if err != nil {
			return &exitError{stagecli.ExitError, err}
		}
		return exit(stagecli.Run(ctx, e, spec))
	case "list":
		since := fs.Duration("since", 0, "how far back (default 24h)")
		pool := fs.String("pool", "", "only this pool's stages")
		limit := fs.Int("limit", 0, "at most this many (default 20)")
		if err := parse(fs, args[1:], 0, out); err != nil {
			return err
		}
		e, err := api.env(ctx, out)
		if err != nil {
			return &exitError{stagecli.ExitError, err}
		}
		return exit(stagecli.List(ctx, e, *since, *pool, *limit))
	case "status", "logs", "cancel":
		follow := fs.Bool("f", false, "logs: follow until the step ends")
		wait := fs.Bool("wait", false, "cancel: wait for the release")
		want := map[string]int{"status": 1, "logs": 2, "cancel": 1}[args[0]]
		if err := parse(fs, args[1:], want, out); err != nil {
			return err
		}
		e, err := api.env(ctx, out)
		if err != nil {
			return &exitError{stagecli.ExitError, err}
		}
		switch args[0] {
		case "status":
			return exit(stagecli.Status(ctx, e, fs.Arg(0)))
		case "logs":
			return exit(stagecli.Logs(ctx, e, fs.Arg(0), fs.Arg(1), *follow))
		default:
			return exit(stagecli.Cancel(ctx, e, fs.Arg(0), *wait))
		}
	default:
		return &exitError{stagecli.ExitError, fmt.Errorf("stage: unknown command %q\n%s", args[0], stageUsage)}
	}
}

// parse parses flags given before or after the positional arguments, of
// which there must be want.
func parse(fs *flag.FlagSet, args []string, want int, out io.Writer) error {
	fs.SetOutput(io.Discard)
	var positional []string
	for {
		if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
			return printUsage(fs, want, out)
		} else if err != nil {
			return &exitError{stagecli.ExitError, fmt.Errorf("%s: %w", fs.Name(), err)}
		}
		if fs.NArg() == 0 {
			break
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(positional) != want {
		return &exitError{stagecli.ExitError, fmt.Errorf("%s: want %d arguments, got %q", fs.Name(), want, positional)}
	}
	return fs.Parse(positional) // leaves them as fs.Args()
}

// errHelp says a command's usage was printed, as --help asked: success.
var errHelp = errors.New("usage printed")

func printUsage(fs *flag.FlagSet, want int, out io.Writer) error {
	args := ""
	if want > 0 {
		args = fmt.Sprintf(" (%d arguments)", want)
	}
	fmt.Fprintf(out, "usage: %s [flags]%s\n\nflags:\n", fs.Name(), args)
	fs.SetOutput(out)
	fs.PrintDefaults()
	return errHelp
}

func exit(code int, err error) error {
	if code == 0 && err == nil {
		return nil
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		err = fmt.Errorf("%w\nnothing listens at the endpoint: start slipway local (make local) in another terminal, or give --endpoint", err)
	}
	return &exitError{code, err}
}

// runPoolsTable is `slipway pools`: every pool's depth.
func runPoolsTable(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("slipway pools", flag.ContinueOnError)
	var api apiFlags
	api.register(fs)
	if err := parse(fs, args, 0, out); err != nil {
		return err
	}
	e, err := api.env(ctx, out)
	if err != nil {
		return &exitError{stagecli.ExitError, err}
	}
	return exit(stagecli.Pools(ctx, e))
}
