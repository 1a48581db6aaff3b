// Command refill is the refill function: on the schedule it refills, reaps
// and reconciles every pool and releases the stages that are not
// progressing; after a release it refills that pool (deploy.Refill).
package main

import (
	"context"
	"log/slog"
	"os"

	"github.com/aws/aws-lambda-go/lambda"

	"github.com/slipway-ci/slipway/internal/deploy"
)

func main() {
	d, err := deploy.AWS(context.Background())
	if err != nil {
		slog.Error("refill function: start", "err", err)
		os.Exit(1)
	}
	lambda.Start(d.Refill)
}
