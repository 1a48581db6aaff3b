// Command init is the init function: it leases a VM for a stage and binds
// its agent (stage.Init).
package main

import (
	"github.com/slipway-ci/slipway/internal/deploy"
	"github.com/slipway-ci/slipway/internal/stage"
)

func main() {
	deploy.Serve("init", func(d *deploy.Deployment) any { return stage.NewInit(d.Deps).Handle })
}
