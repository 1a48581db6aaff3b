// Command init is the init function: it leases a VM for a stage and binds
// its agent (stage.Init).
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
		slog.Error("init function: start", "err", err)
		os.Exit(1)
	}
	lambda.Start(stage.NewInit(d.Deps).Handle)
}
