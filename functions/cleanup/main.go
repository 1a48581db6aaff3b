// Command cleanup is the cleanup function: it releases a stage's VM, from
// the state machine, the execution-status rule or a DELETE (stage.Cleanup).
package main

import (
	"github.com/slipway-ci/slipway/internal/deploy"
	"github.com/slipway-ci/slipway/internal/stage"
)

func main() {
	deploy.Serve("cleanup", func(d *deploy.Deployment) any { return stage.NewCleanup(d.Deps).Handle })
}
