// Command cleanup is the cleanup function: it releases a stage's VM, from
// the state machine, the execution-status rule or a DELETE (stage.Cleanup).
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
		slog.Error("cleanup function: start", "err", err)
		os.Exit(1)
	}
	lambda.Start(stage.NewCleanup(d.Deps).Handle)
}
