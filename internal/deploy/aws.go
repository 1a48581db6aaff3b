package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	lambdart "github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/lambda"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sfn"
	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/slipway-ci/slipway/internal/awsclient"
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
	// function's bootstrap (in LAMBDA_TASK_ROOT). The CDK app ships it in a
	// layer (/opt/pools.yaml).
	EnvPoolsFile = "SLIPWAY_POOLS_FILE"
	// EnvSubnets (comma-separated) are the subnets of the pools that name
	// none; EnvVMSecurityGroups (comma-separated) are added to every pool's.
	EnvSubnets          = "SLIPWAY_SUBNETS"
	EnvVMSecurityGroups = "SLIPWAY_VM_SECURITY_GROUPS"
	// EnvOperators (comma-separated IAM ARN patterns, * allowed) are the
	// principals who see and act on every stage.
	EnvOperators = "SLIPWAY_OPERATORS"
	// EnvMaxActiveStages is the most active stages one principal may have.
	EnvMaxActiveStages = "SLIPWAY_MAX_ACTIVE_STAGES"
	// EnvMaxStageTimeout and EnvMaxIdleTimeout (Go durations) are the
	// longest a stage may run and wait for its next group.
	EnvMaxStageTimeout = "SLIPWAY_MAX_STAGE_TIMEOUT"
	EnvMaxIdleTimeout  = "SLIPWAY_MAX_IDLE_TIMEOUT"
	// EnvLaunchTemplates is a JSON object: pool name to launch template id.
	EnvLaunchTemplates = "SLIPWAY_LAUNCH_TEMPLATES"
	// EnvAgentObjects is a JSON object: platform ("linux/arm64") to the
	// agent binary's S3 object, {"bucket": ..., "key": ...}.
	EnvAgentObjects = "SLIPWAY_AGENT_OBJECTS"
)

// Fleet is what the functions' environment says about the EC2 fleet: the
// network every pool completes its own with, the pools' launch templates
// and the agent binaries.
type Fleet struct {
	Network         pool.Network
	LaunchTemplates map[string]string
	Agents          map[string]fleet.Object
}

// FleetFromEnv reads the fleet's settings, naming the variable that is
// malformed.
func FleetFromEnv(getenv func(string) string) (Fleet, error) {
	f := Fleet{Network: pool.Network{Subnets: list(getenv(EnvSubnets)), SecurityGroups: list(getenv(EnvVMSecurityGroups))}}
	var errs []error
	if v := getenv(EnvLaunchTemplates); v != "" {
		if err := json.Unmarshal([]byte(v), &f.LaunchTemplates); err != nil {
			errs = append(errs, fmt.Errorf("%s: want a JSON object of pool names to launch template ids: %w", EnvLaunchTemplates, err))
		}
	}
	if v := getenv(EnvAgentObjects); v != "" {
		if err := json.Unmarshal([]byte(v), &f.Agents); err != nil {
			errs = append(errs, fmt.Errorf("%s: want a JSON object of platforms to {\"bucket\", \"key\"}: %w", EnvAgentObjects, err))
		}
		for platform, o := range f.Agents {
			if o.Bucket == "" || o.Key == "" {
				errs = append(errs, fmt.Errorf("%s: %s: want a bucket and a key", EnvAgentObjects, platform))
			}
		}
	}
	return f, errors.Join(errs...)
}

func list(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

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
	fl, err := FleetFromEnv(os.Getenv)
	if err != nil {
		return nil, fmt.Errorf("deployment: %w", err)
	}
	pools, err := pool.LoadFor(PoolsFile(os.Getenv), fl.Network)
	if err != nil {
		return nil, err
	}
	cfg, err := config.LoadDefaultConfig(ctx, config.WithHTTPClient(awsclient.HTTPClient()))
	if err != nil {
		return nil, fmt.Errorf("aws configuration: %w", err)
	}
	s3Client := s3.NewFromConfig(cfg)
	clients := Clients{
		DynamoDB:   dynamodb.NewFromConfig(cfg),
		KMS:        kms.NewFromConfig(cfg),
		Executions: sfn.NewFromConfig(cfg),
		Invoker:    lambda.NewFromConfig(cfg),
		Fleet: &fleet.EC2{
			EC2: ec2.NewFromConfig(cfg), SSM: ssm.NewFromConfig(cfg), Deployment: s.Deployment,
			LaunchTemplates: fl.LaunchTemplates, Agents: fl.Agents, Presign: s3.NewPresignClient(s3Client),
		},
		Logs: &logarchive.S3{Client: s3Client, Bucket: s.LogBucket},
	}
	tuning := stage.Settings{Operators: list(os.Getenv(EnvOperators))}
	if v := os.Getenv(EnvMaxActiveStages); v != "" {
		if tuning.MaxActiveStages, err = strconv.Atoi(v); err != nil || tuning.MaxActiveStages < 1 {
			return nil, fmt.Errorf("deployment: %s %q: want a whole number above 0", EnvMaxActiveStages, v)
		}
	}
	for env, d := range map[string]*time.Duration{EnvMaxStageTimeout: &tuning.MaxStageTimeout, EnvMaxIdleTimeout: &tuning.MaxIdleTimeout} {
		if v := os.Getenv(env); v != "" {
			if *d, err = time.ParseDuration(v); err != nil || *d <= 0 {
				return nil, fmt.Errorf("deployment: %s %q: want a duration such as 2h", env, v)
			}
		}
	}
	return Build(ctx, s, clients, pools.Pools, tuning, os.Stderr, os.Stdout)
}

// Serve is a function's main: it builds the deployment from the function's
// environment (AWS) and serves the Lambda handler that handler makes of it;
// a deployment that cannot be built ends the process, saying why.
func Serve(function string, handler func(*Deployment) any) {
	d, err := AWS(context.Background())
	if err != nil {
		slog.Error(function+" function: start", "err", err)
		os.Exit(1)
	}
	lambdart.Start(handler(d))
}
