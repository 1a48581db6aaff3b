//go:build !windows

package main

import (
	"context"
	"os"
)

func runAsService(run func(context.Context, []string) error) error {
	return run(context.Background(), os.Args[1:])
}

func defaultWorkDir() string { return "/var/lib/slipway/work" }
