package deploy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/lambda"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sfn"
	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/slipway-ci/slipway/internal/fleet"
	"github.com/slipway-ci/slipway/internal/logarchive"
	"github.com/slipway-ci/slipway/internal/pool"
	"github.com/slipway-ci/slipway/internal/stage"
)

// The functions' environment variables; the CDK app sets them.
const (
	EnvDeployment      = "SLIPWAY_DEPLOYMENT"
	EnvTable           = "SLIPWAY_TABLE"
	EnvCAKeyID         = "SLIPWAY_CA_KEY_ID"
	EnvSecretsKeyID    = "SLIPWAY_SECRETS_KEY_ID"
	EnvStateMachineARN = "SLIPWAY_STATE_MACHINE_ARN"
	EnvCleanupFunction = "SLIPWAY_CLEANUP_FUNCTION"
	EnvRefillFunction  = "SLIPWAY_REFILL_FUNCTION"
	EnvAgentURL        = "SLIPWAY_AGENT_URL"
	EnvLogBucket       = "SLIPWAY_LOG_BUCKET"
	// EnvPoolsFile names the pools file; by default pools.yaml beside the
	// function's bootstrap (in LAMBDA_TASK_ROOT), where the CDK app puts it.
	EnvPoolsFile = "SLIPWAY_POOLS_FILE"
)

// FromEnv reads the settings from the environment.
func FromEnv(getenv func(string) string) Settings {
	return Settings{
		Deployment: getenv(EnvDeployment), Table: getenv(EnvTable),
		CAKeyID: getenv(EnvCAKeyID), SecretsKeyID: getenv(EnvSecretsKeyID),
		StateMachineARN: getenv(EnvStateMachineARN),
		CleanupFunction: getenv(EnvCleanupFunction), RefillFunction: getenv(EnvRefillFunction),
		AgentURL: getenv(EnvAgentURL), LogBucket: getenv(EnvLogBucket),
	}
}

// PoolsFile is where a function finds the pools file.
func PoolsFile(getenv func(string) string) string {
	if f := getenv(EnvPoolsFile); f != "" {
		return f
	}
	return filepath.Join(getenv("LAMBDA_TASK_ROOT"), "pools.yaml")
}

// AWS builds the deployment a function runs in: settings from its
// environment, clients from the AWS SDK's default configuration (the
// function's role), the EC2 fleet. Logs go to stderr, metrics (EMF lines)
// to stdout: CloudWatch takes both.
func AWS(ctx context.Context) (*Deployment, error) {
	s := FromEnv(os.Getenv)
	if s.LogBucket == "" {
		return nil, fmt.Errorf("deployment: %s is not set", EnvLogBucket)
	}
	pools, err := pool.Load(PoolsFile(os.Getenv))
	if err != nil {
		return nil, err
	}
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return nil, fmt.Errorf("aws configuration: %w", err)
	}
	clients := Clients{
		DynamoDB:   dynamodb.NewFromConfig(cfg),
		KMS:        kms.NewFromConfig(cfg),
		Executions: sfn.NewFromConfig(cfg),
		Invoker:    lambda.NewFromConfig(cfg),
		Fleet:      &fleet.EC2{EC2: ec2.NewFromConfig(cfg), SSM: ssm.NewFromConfig(cfg), Deployment: s.Deployment},
		Logs:       &logarchive.S3{Client: s3.NewFromConfig(cfg), Bucket: s.LogBucket},
	}
	return Build(ctx, s, clients, pools.Pools, stage.Settings{}, os.Stderr, os.Stdout)
}
