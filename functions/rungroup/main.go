// Command step is the step function: it runs a stage's groups on its VM
// (stage.RunGroup).
package main

import (
	"context"
	"log/slog"
	"os"

	"github.com/aws/aws-lambda-go/lambda"

	"github.com/slipway-ci/slipway/internal/deploy"
	"github.com/slipway-ci/slipway/internal/stage"
)

func main() {
	d, err := deploy.AWS(context.Background())
	if err != nil {
		slog.Error("step function: start", "err", err)
		os.Exit(1)
	}
	lambda.Start(stage.NewRunGroup(d.Deps).Handle)
}
