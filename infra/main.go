// Command infra is the CDK app that deploys Slipway into an AWS account
// (cdk.json runs it: `go run ./infra`). Its configuration is the CDK
// context: see Config and docs/deploy.md. cdk-nag's AwsSolutions
// checks run on every synth; an unsuppressed finding fails it.
package main

import (
	"fmt"
	"os"

	"github.com/aws/aws-cdk-go/awscdk/v2"
	"github.com/aws/jsii-runtime-go"
	"github.com/cdklabs/cdk-nag-go/cdknag/v2"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "slipway infra:", err)
		os.Exit(1)
	}
}

func run() error {
	defer jsii.Close()
	app := awscdk.NewApp(nil)
	if _, err := Synth(app, "."); err != nil {
		return err
	}
	app.Synth(nil)
	return nil
}

// Synth declares the deployment the app's context describes, with the
// AwsSolutions checks applied; root is the repository (the assets' root).
func Synth(app awscdk.App, root string) (*Stack, error) {
	cfg, err := LoadConfig(func(key string) any { return app.Node().TryGetContext(jsii.String(key)) }, root)
	if err != nil {
		return nil, err
	}
	stack, err := NewStack(app, cfg)
	if err != nil {
		return nil, err
	}
	awscdk.Aspects_Of(app).Add(cdknag.NewAwsSolutionsChecks(&cdknag.NagPackProps{Verbose: jsii.Bool(true)}), nil)
	return stack, nil
}
