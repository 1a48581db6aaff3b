package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/slipway-ci/slipway/internal/pool"
)

const poolsUsage = `usage: slipway pools check FILE | slipway pools import FILE

  check FILE    read a pools file and report every problem at once, each with its pool and key
  import FILE   convert a drone-runner-aws pool file to Slipway's, on standard output
`

func runPools(args []string, out io.Writer) error {
	if len(args) == 2 && (args[1] == "-h" || args[1] == "--help" || args[1] == "-help") {
		fmt.Fprint(out, poolsUsage)
		return errHelp
	}
	if len(args) != 2 || (args[0] != "check" && args[0] != "import") {
		return errors.New("pools: want `pools check FILE` or `pools import FILE`")
	}
	switch args[0] {
	case "check":
		cfg, err := pool.Load(args[1])
		if err != nil {
			return err
		}
		for _, p := range cfg.Pools {
			fmt.Fprintf(out, "pool %s: %s/%s, %v, min idle %d, max %d\n", p.Name, p.OS, p.Arch, p.InstanceTypes, p.MinIdle, p.MaxInstances)
		}
		warnUnknownTypes(cfg)
		return nil
	default:
		data, err := os.ReadFile(args[1])
		if err != nil {
			return fmt.Errorf("pools import: %w", err)
		}
		cfg, notes, err := pool.ImportDrone(data)
		if err != nil {
			return fmt.Errorf("pools import %s: %w", args[1], err)
		}
		for _, n := range notes {
			fmt.Fprintln(os.Stderr, "note:", n)
		}
		if len(cfg.Pools) == 0 {
			return fmt.Errorf("pools import %s: no instance converts (only type amazon does): nothing to write", args[1])
		}
		yamlOut, err := pool.Marshal(cfg)
		if err != nil {
			return err
		}
		if _, err := out.Write(yamlOut); err != nil {
			return err
		}
		warnUnknownTypes(cfg)
		if _, err := pool.Parse(yamlOut); err != nil {
			return fmt.Errorf("pools import %s: the converted file above needs these before it can be used:\n%w", args[1], err)
		}
		return nil
	}
}

// warnUnknownTypes says which instance types the SDK does not know: they
// may be typos, or newer than this build.
func warnUnknownTypes(cfg *pool.Config) {
	for _, p := range cfg.Pools {
		for _, t := range p.UnknownInstanceTypes() {
			fmt.Fprintf(os.Stderr, "warning: pool %s: instance type %s is not one this build's AWS SDK lists (a typo, or newer than the SDK)\n", p.Name, t)
		}
	}
}
