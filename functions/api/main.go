// Command api is the delegate API's function, behind API Gateway's REST
// proxy integration (stage.API).
package main

import (
	"context"
	"log/slog"
	"os"

	"github.com/aws/aws-lambda-go/lambda"

	"github.com/slipway-ci/slipway/internal/apigw"
	"github.com/slipway-ci/slipway/internal/deploy"
	"github.com/slipway-ci/slipway/internal/stage"
)

func main() {
	d, err := deploy.AWS(context.Background())
	if err != nil {
		slog.Error("api function: start", "err", err)
		os.Exit(1)
	}
	lambda.Start(apigw.Handler(stage.NewAPI(d.Deps)))
}
