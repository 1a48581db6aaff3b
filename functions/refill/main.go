// Command refill is the refill function: on the schedule it refills, reaps
// and reconciles every pool and releases the stages that are not
// progressing; after a release it refills that pool (deploy.Refill).
package main

import (
	"github.com/slipway-ci/slipway/internal/deploy"
)

func main() {
	deploy.Serve("refill", func(d *deploy.Deployment) any { return d.Refill })
}
