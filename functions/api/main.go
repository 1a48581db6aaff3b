// Command api is the delegate API's function, behind API Gateway's REST
// proxy integration (stage.API).
package main

import (
	"github.com/slipway-ci/slipway/internal/apigw"
	"github.com/slipway-ci/slipway/internal/deploy"
	"github.com/slipway-ci/slipway/internal/stage"
)

func main() {
	deploy.Serve("api", func(d *deploy.Deployment) any { return apigw.Handler(stage.NewAPI(d.Deps)) })
}
