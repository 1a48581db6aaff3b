// Command rungroup is the rungroup function: it runs a stage's groups on its
// VM (stage.RunGroup).
package main

import (
	"github.com/slipway-ci/slipway/internal/deploy"
	"github.com/slipway-ci/slipway/internal/stage"
)

func main() {
	deploy.Serve("rungroup", func(d *deploy.Deployment) any { return stage.NewRunGroup(d.Deps).Handle })
}
