package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/slipway-ci/slipway/internal/local"
	"github.com/slipway-ci/slipway/internal/localaws"
	"github.com/slipway-ci/slipway/internal/pool"
)

// localFlags are the flags of `slipway local`, which the demo shares.
type localFlags struct {
	opts      local.Options
	repo      string
	pools     poolFlags
	poolsFile string
}

func (f *localFlags) register(fs *flag.FlagSet) {
	o := &f.opts
	fs.StringVar(&f.repo, "repo", ".", "the Slipway checkout the defaults below come from (what make deps and make build put there)")
	fs.StringVar(&o.Listen, "listen", "127.0.0.1:8079", "address of the delegate API")
	fs.StringVar(&o.AgentPath, "agent", "", "agent binary the local VMs run (default: bin/slipway-agent-GOOS-GOARCH)")
	fs.StringVar(&o.Node, "node", "", "Node 22 or newer for the ASL engine (default: .cache/node's, else node on PATH)")
	fs.StringVar(&o.NodeModules, "node-modules", "", "folder holding aws-local-stepfunctions (default: node_modules)")
	fs.StringVar(&o.DynamoDBEndpoint, "dynamodb-endpoint", os.Getenv(localaws.DynamoDBEndpointEnv), "a running DynamoDB Local (default $"+localaws.DynamoDBEndpointEnv+"; empty: start one)")
	fs.StringVar(&o.KMSEndpoint, "kms-endpoint", os.Getenv(localaws.KMSEndpointEnv), "a running local-kms (default $"+localaws.KMSEndpointEnv+"; empty: start one)")
	fs.StringVar(&o.Dir, "dir", "", "folder for the runtime's files and logs, kept (default: a temporary folder, removed at the end)")
	fs.DurationVar(&o.Tick, "tick", 10*time.Second, "period of refill, reap and reconcile")
	fs.Var(&f.pools, "pool", "a pool of local VMs, NAME=MIN/MAX (min idle, max instances); repeatable (default local=2/4)")
	fs.StringVar(&f.poolsFile, "pools", "", "a pools file: its pools' names, min idle and max, run as local VMs")
}

// options are the runtime's options after the flags.
func (f *localFlags) options() (local.Options, error) {
	o := f.opts
	root, err := local.RepoRoot(f.repo)
	if err != nil {
		return o, fmt.Errorf("%w: run slipway local in a Slipway checkout or pass --repo", err)
	}
	o.FromRepo(root)
	o.Pools = append(o.Pools, f.pools...)
	if f.poolsFile != "" {
		cfg, err := pool.Load(f.poolsFile)
		if err != nil {
			return o, err
		}
		for _, p := range cfg.Pools {
			o.Pools = append(o.Pools, local.LocalPool(p.Name, p.MinIdle, p.MaxInstances))
		}
	}
	return o, nil
}

// poolFlags is the repeatable --pool NAME=MIN/MAX.
type poolFlags []pool.Pool

func (p *poolFlags) String() string {
	parts := make([]string, len(*p))
	for i, pl := range *p {
		parts[i] = fmt.Sprintf("%s=%d/%d", pl.Name, pl.MinIdle, pl.MaxInstances)
	}
	return strings.Join(parts, ",")
}

func (p *poolFlags) Set(v string) error {
	name, sizes, ok := strings.Cut(v, "=")
	minText, maxText, ok2 := strings.Cut(sizes, "/")
	minIdle, err1 := strconv.Atoi(minText)
	maxInstances, err2 := strconv.Atoi(maxText)
	if !ok || !ok2 || err1 != nil || err2 != nil {
		return fmt.Errorf("%q: want NAME=MIN/MAX, as local=2/4", v)
	}
	pl := local.LocalPool(name, minIdle, maxInstances)
	if err := pl.Check(); err != nil {
		return fmt.Errorf("%q: %w", v, err)
	}
	*p = append(*p, pl)
	return nil
}

// runLocal is `slipway local`: a whole deployment on this machine until
// Ctrl-C.
func runLocal(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("slipway local", flag.ContinueOnError)
	var f localFlags
	f.register(fs)
	if err := parse(fs, args, 0, out); err != nil {
		return err
	}
	o, err := f.options()
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "slipway local: starting DynamoDB Local, local-kms, the local Step Functions, the functions and the warm pools…")
	rt, err := local.Start(ctx, o)
	if err != nil {
		return err
	}
	defer rt.Close()
	fmt.Fprintf(out, `slipway local is up.
  delegate API     %[1]s   (the OpenAPI document: %[1]s/v1/openapi.yaml)
  Lambda           %[2]s
  Step Functions   %[3]s
  files and logs   %[4]s
pools: %[5]s

Try:
  curl -s %[1]s/v1/pools
  curl -s -XPOST %[1]s/v1/stages -d '{"id":"hello","pool":"%[6]s","groups":[{"final":true,"steps":[{"id":"hi","script":"echo hello from $(hostname)"}]}]}'
  curl -s '%[1]s/v1/stages/hello?wait=25s'

Ctrl-C stops everything, and so does a kill: the books live in this process, the next run starts empty.
`, rt.APIURL, rt.LambdaURL, rt.StepFunctionsURL, rt.Dir, poolNames(rt), rt.Deployment.Deps.Pools[0].Name)
	select {
	case <-ctx.Done():
	case <-rt.Died():
		fmt.Fprintf(out, "slipway local: %v; stopping everything (start slipway local again: it begins with empty books)\n", rt.Err())
		return &exitError{1, nil}
	}
	fmt.Fprintln(out, "slipway local: stopping")
	if errors.Is(context.Cause(ctx), context.Canceled) {
		return nil
	}
	return context.Cause(ctx)
}

func poolNames(rt *local.Runtime) string {
	names := make([]string, len(rt.Deployment.Deps.Pools))
	for i, p := range rt.Deployment.Deps.Pools {
		names[i] = fmt.Sprintf("%s (min idle %d, max %d)", p.Name, p.MinIdle, p.MaxInstances)
	}
	return strings.Join(names, ", ")
}
