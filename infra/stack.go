package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/aws/aws-cdk-go/awscdk/v2"
	"github.com/aws/aws-cdk-go/awscdk/v2/awsapigateway"
	"github.com/aws/aws-cdk-go/awscdk/v2/awsdynamodb"
	"github.com/aws/aws-cdk-go/awscdk/v2/awsec2"
	"github.com/aws/aws-cdk-go/awscdk/v2/awsevents"
	"github.com/aws/aws-cdk-go/awscdk/v2/awseventstargets"
	"github.com/aws/aws-cdk-go/awscdk/v2/awsiam"
	"github.com/aws/aws-cdk-go/awscdk/v2/awskms"
	"github.com/aws/aws-cdk-go/awscdk/v2/awslambda"
	"github.com/aws/aws-cdk-go/awscdk/v2/awslogs"
	"github.com/aws/aws-cdk-go/awscdk/v2/awss3"
	"github.com/aws/aws-cdk-go/awscdk/v2/awss3assets"
	"github.com/aws/aws-cdk-go/awscdk/v2/awsscheduler"
	"github.com/aws/aws-cdk-go/awscdk/v2/awsschedulertargets"
	"github.com/aws/aws-cdk-go/awscdk/v2/awsstepfunctions"
	"github.com/aws/constructs-go/constructs/v10"
	"github.com/aws/jsii-runtime-go"

	"github.com/slipway-ci/slipway/internal/ddb"
	"github.com/slipway-ci/slipway/internal/deploy"
	"github.com/slipway-ci/slipway/internal/fleet"
	"github.com/slipway-ci/slipway/internal/secret"
	"github.com/slipway-ci/slipway/internal/stage"
	"github.com/slipway-ci/slipway/statemachine"
)

// Stack is a deployment's control plane, with the parts the tests look at.
type Stack struct {
	awscdk.Stack
	cfg *Config

	vpc               awsec2.IVpc
	subnets           *awsec2.SubnetSelection
	functionsSG, vmSG awsec2.SecurityGroup
	table             awsdynamodb.Table
	caKey, secretsKey awskms.Key
	logBucket         awss3.Bucket
	agents            map[string]awss3assets.Asset
	vmRole            awsiam.Role
	launchTemplates   map[string]awsec2.LaunchTemplate
	functions         map[string]awslambda.Function
	stateMachine      awsstepfunctions.StateMachine
	api               awsapigateway.RestApi
}

// agentPort is the agent's TLS port, the only one the VMs admit.
const agentPort = fleet.DefaultPort

// NewStack declares a deployment.
func NewStack(scope constructs.Construct, cfg *Config) (*Stack, error) {
	s := &Stack{cfg: cfg}
	s.Stack = awscdk.NewStack(scope, jsii.String("Slipway-"+cfg.Deployment), &awscdk.StackProps{
		Env:         &awscdk.Environment{Account: jsii.String(cfg.Account), Region: jsii.String(cfg.Region)},
		Description: jsii.String("Slipway " + cfg.Deployment + ": CI stages on ephemeral EC2 VMs"),
	})
	awscdk.Tags_Of(s.Stack).Add(jsii.String(fleet.TagDeployment), jsii.String(cfg.Deployment), nil)
	s.network()
	s.data()
	if err := s.fleet(); err != nil {
		return nil, err
	}
	if err := s.lambdas(); err != nil {
		return nil, err
	}
	if err := s.orchestration(); err != nil {
		return nil, err
	}
	if err := s.delegateAPI(); err != nil {
		return nil, err
	}
	s.alarms()
	s.suppressions()
	return s, nil
}

// name is a resource name of this deployment: <deployment>-<part>, with
// "slipway-" in front unless the deployment's name starts with it.
func (s *Stack) name(part string) string {
	if strings.HasPrefix(s.cfg.Deployment, "slipway") {
		return s.cfg.Deployment + "-" + part
	}
	return "slipway-" + s.cfg.Deployment + "-" + part
}

func (s *Stack) retention() awslogs.RetentionDays { return retentionDays[s.cfg.LogRetentionDays] }

// retentionDays are the retentions CloudWatch Logs offers.
var retentionDays = map[int]awslogs.RetentionDays{
	1: awslogs.RetentionDays_ONE_DAY, 3: awslogs.RetentionDays_THREE_DAYS, 5: awslogs.RetentionDays_FIVE_DAYS,
	7: awslogs.RetentionDays_ONE_WEEK, 14: awslogs.RetentionDays_TWO_WEEKS, 30: awslogs.RetentionDays_ONE_MONTH,
	60: awslogs.RetentionDays_TWO_MONTHS, 90: awslogs.RetentionDays_THREE_MONTHS, 180: awslogs.RetentionDays_SIX_MONTHS,
	365: awslogs.RetentionDays_ONE_YEAR, 731: awslogs.RetentionDays_TWO_YEARS, 1827: awslogs.RetentionDays_FIVE_YEARS,
	3653: awslogs.RetentionDays_TEN_YEARS,
}

func (s *Stack) logGroup(id string) awslogs.LogGroup {
	return awslogs.NewLogGroup(s.Stack, jsii.String(id), &awslogs.LogGroupProps{
		Retention: s.retention(), RemovalPolicy: awscdk.RemovalPolicy_DESTROY,
	})
}

// network is the VPC, its endpoints and the two security groups: the
// functions' (out to AWS on 443 and to the agents) and the VMs' (the agent's
// port from the functions only).
func (s *Stack) network() {
	cfg := s.cfg
	if cfg.VPCID != "" {
		s.vpc = awsec2.Vpc_FromVpcAttributes(s.Stack, jsii.String("Vpc"), &awsec2.VpcAttributes{
			VpcId:                      jsii.String(cfg.VPCID),
			AvailabilityZones:          jsii.Strings(cfg.AvailabilityZones...),
			PrivateSubnetIds:           jsii.Strings(cfg.SubnetIDs...),
			PrivateSubnetRouteTableIds: routeTables(cfg),
		})
		s.subnets = &awsec2.SubnetSelection{SubnetType: awsec2.SubnetType_PRIVATE_WITH_EGRESS}
	} else {
		private := awsec2.SubnetType_PRIVATE_WITH_EGRESS
		subnets := []*awsec2.SubnetConfiguration{
			{Name: jsii.String("public"), SubnetType: awsec2.SubnetType_PUBLIC, CidrMask: jsii.Number(24)},
			{Name: jsii.String("builds"), SubnetType: private, CidrMask: jsii.Number(20)},
		}
		if cfg.NATGateways == 0 {
			private = awsec2.SubnetType_PRIVATE_ISOLATED
			subnets = []*awsec2.SubnetConfiguration{{Name: jsii.String("builds"), SubnetType: private, CidrMask: jsii.Number(20)}}
		}
		vpc := awsec2.NewVpc(s.Stack, jsii.String("Vpc"), &awsec2.VpcProps{
			IpAddresses:         awsec2.IpAddresses_Cidr(jsii.String("10.80.0.0/16")),
			MaxAzs:              jsii.Number(2),
			NatGateways:         jsii.Number(float64(cfg.NATGateways)),
			SubnetConfiguration: &subnets,
		})
		s.vpc = vpc
		s.subnets = &awsec2.SubnetSelection{SubnetType: private}
	}
	if cfg.GatewayEndpoints {
		for id, svc := range map[string]awsec2.GatewayVpcEndpointAwsService{
			"S3Endpoint": awsec2.GatewayVpcEndpointAwsService_S3(), "DynamoDBEndpoint": awsec2.GatewayVpcEndpointAwsService_DYNAMODB(),
		} {
			s.vpc.AddGatewayEndpoint(jsii.String(id), &awsec2.GatewayVpcEndpointOptions{Service: svc, Subnets: &[]*awsec2.SubnetSelection{s.subnets}})
		}
	}

	s.functionsSG = awsec2.NewSecurityGroup(s.Stack, jsii.String("FunctionsSecurityGroup"), &awsec2.SecurityGroupProps{
		Vpc: s.vpc, AllowAllOutbound: jsii.Bool(false),
		Description: jsii.String("Slipway functions: out to AWS APIs (443) and to the agents"),
	})
	s.functionsSG.AddEgressRule(awsec2.Peer_AnyIpv4(), awsec2.Port_Tcp(jsii.Number(443)), jsii.String("AWS APIs"), nil)
	s.vmSG = awsec2.NewSecurityGroup(s.Stack, jsii.String("VMSecurityGroup"), &awsec2.SecurityGroupProps{
		Vpc: s.vpc, AllowAllOutbound: jsii.Bool(true),
		Description: jsii.String("Slipway build VMs: the agent port from the functions only, builds reach out as they need"),
	})
	s.vmSG.AddIngressRule(s.functionsSG, awsec2.Port_Tcp(jsii.Number(agentPort)), jsii.String("the functions to the agent (mTLS)"), nil)
	s.functionsSG.AddEgressRule(s.vmSG, awsec2.Port_Tcp(jsii.Number(agentPort)), jsii.String("to the agents (mTLS)"), nil)

	if cfg.InterfaceEndpoints {
		endpointsSG := awsec2.NewSecurityGroup(s.Stack, jsii.String("EndpointsSecurityGroup"), &awsec2.SecurityGroupProps{
			Vpc: s.vpc, AllowAllOutbound: jsii.Bool(false),
			Description: jsii.String("Slipway interface endpoints: HTTPS from the functions"),
		})
		endpointsSG.AddIngressRule(s.functionsSG, awsec2.Port_Tcp(jsii.Number(443)), jsii.String("the functions"), nil)
		for _, e := range interfaceEndpoints() {
			s.vpc.AddInterfaceEndpoint(jsii.String(e.id), &awsec2.InterfaceVpcEndpointOptions{
				Service: e.service, Subnets: s.subnets, SecurityGroups: &[]awsec2.ISecurityGroup{endpointsSG},
				Open: jsii.Bool(false), PrivateDnsEnabled: jsii.Bool(true),
			})
		}
	}
}

type endpoint struct {
	id      string
	service awsec2.InterfaceVpcEndpointAwsService
}

// interfaceEndpoints are the AWS APIs the functions call besides DynamoDB
// and S3 (which have gateway endpoints).
func interfaceEndpoints() []endpoint {
	return []endpoint{
		{"EC2Endpoint", awsec2.InterfaceVpcEndpointAwsService_EC2()},
		{"StepFunctionsEndpoint", awsec2.InterfaceVpcEndpointAwsService_STEP_FUNCTIONS()},
		{"KMSEndpoint", awsec2.InterfaceVpcEndpointAwsService_KMS()},
		{"LogsEndpoint", awsec2.InterfaceVpcEndpointAwsService_CLOUDWATCH_LOGS()},
		{"LambdaEndpoint", awsec2.InterfaceVpcEndpointAwsService_LAMBDA()},
		{"SSMEndpoint", awsec2.InterfaceVpcEndpointAwsService_SSM()},
	}
}

func routeTables(cfg *Config) *[]*string {
	if len(cfg.RouteTableIDs) == 0 {
		return nil
	}
	// One per subnet; a single one given serves them all.
	ids := cfg.RouteTableIDs
	for len(ids) < len(cfg.SubnetIDs) {
		ids = append(ids, cfg.RouteTableIDs[0])
	}
	return jsii.Strings(ids...)
}

// data is the table, the keys and the step log bucket.
func (s *Stack) data() {
	def := ddb.TableInput("")
	attr := func(name string) *awsdynamodb.Attribute {
		return &awsdynamodb.Attribute{Name: jsii.String(name), Type: awsdynamodb.AttributeType_STRING}
	}
	gsi := def.GlobalSecondaryIndexes[0]
	s.table = awsdynamodb.NewTable(s.Stack, jsii.String("Table"), &awsdynamodb.TableProps{
		PartitionKey:                     attr(*def.KeySchema[0].AttributeName),
		SortKey:                          attr(*def.KeySchema[1].AttributeName),
		BillingMode:                      awsdynamodb.BillingMode_PAY_PER_REQUEST,
		PointInTimeRecoverySpecification: &awsdynamodb.PointInTimeRecoverySpecification{PointInTimeRecoveryEnabled: jsii.Bool(true)},
		Encryption:                       awsdynamodb.TableEncryption_AWS_MANAGED,
		TimeToLiveAttribute:              jsii.String(ddb.TTLAttribute),
		RemovalPolicy:                    awscdk.RemovalPolicy_RETAIN,
	})
	s.table.AddGlobalSecondaryIndex(&awsdynamodb.GlobalSecondaryIndexProps{
		IndexName:      gsi.IndexName,
		PartitionKey:   attr(*gsi.KeySchema[0].AttributeName),
		SortKey:        attr(*gsi.KeySchema[1].AttributeName),
		ProjectionType: awsdynamodb.ProjectionType_KEYS_ONLY,
	})

	s.caKey = awskms.NewKey(s.Stack, jsii.String("CAKey"), &awskms.KeyProps{
		Description: jsii.String("Slipway " + s.cfg.Deployment + " CA: signs the VMs' and the functions' certificates; the private key never leaves KMS"),
		KeySpec:     awskms.KeySpec_ECC_NIST_P256, KeyUsage: awskms.KeyUsage_SIGN_VERIFY,
		RemovalPolicy: awscdk.RemovalPolicy_RETAIN, Policy: keyAdministration(),
	})
	s.secretsKey = awskms.NewKey(s.Stack, jsii.String("SecretsKey"), &awskms.KeyProps{
		Description:       jsii.String("Slipway " + s.cfg.Deployment + " stage secrets: data keys under the stage id's encryption context"),
		EnableKeyRotation: jsii.Bool(true), RemovalPolicy: awscdk.RemovalPolicy_RETAIN, Policy: keyAdministration(),
	})

	s.logBucket = awss3.NewBucket(s.Stack, jsii.String("StepLogs"), &awss3.BucketProps{
		Encryption: awss3.BucketEncryption_S3_MANAGED, EnforceSSL: jsii.Bool(true),
		BlockPublicAccess: awss3.BlockPublicAccess_BLOCK_ALL(), Versioned: jsii.Bool(false),
		ObjectOwnership: awss3.ObjectOwnership_BUCKET_OWNER_ENFORCED,
		LifecycleRules: &[]*awss3.LifecycleRule{{
			Id: jsii.String("expire-step-logs"), Expiration: awscdk.Duration_Days(jsii.Number(float64(s.cfg.StepLogDays))),
			AbortIncompleteMultipartUploadAfter: awscdk.Duration_Days(jsii.Number(1)),
		}},
		RemovalPolicy: awscdk.RemovalPolicy_RETAIN,
	})
}

// keyAdministration is a key policy that lets the account administer the
// key and nothing more: CDK's default gives the account kms:*, so any role
// of it that IAM allowed kms:Sign could mint orchestrator certificates.
// Whoever uses the key is named in its policy (grants), by role.
func keyAdministration() awsiam.PolicyDocument {
	return awsiam.NewPolicyDocument(&awsiam.PolicyDocumentProps{Statements: &[]awsiam.PolicyStatement{
		awsiam.NewPolicyStatement(&awsiam.PolicyStatementProps{
			Sid: jsii.String("AccountAdministersTheKey"), Principals: &[]awsiam.IPrincipal{awsiam.NewAccountRootPrincipal()},
			Actions: jsii.Strings(keyAdminActions...), Resources: jsii.Strings("*"),
		}),
	}})
}

// keyAdminActions are AWS's key administrator actions: managing the key,
// never using it (no Sign, Encrypt, Decrypt or GenerateDataKey).
var keyAdminActions = []string{
	"kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*", "kms:Update*", "kms:Revoke*",
	"kms:Disable*", "kms:Get*", "kms:Delete*", "kms:TagResource", "kms:UntagResource",
	"kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion", "kms:RotateKeyOnDemand",
}

// fleet is what the build VMs are launched with: the agent binaries (S3
// assets that the launching functions presign a download of), an instance
// role with no permissions (the agent calls no AWS API: its certificates
// come in user data, its binary through a presigned URL), and a launch
// template per pool.
func (s *Stack) fleet() error {
	s.agents = map[string]awss3assets.Asset{}
	for _, platform := range s.cfg.platforms() {
		file := filepath.Join(s.cfg.AssetRoot, "bin", agentBinary(platform))
		if _, err := os.Stat(file); err != nil {
			return fmt.Errorf("agent for %s: %w (make build makes it)", platform, err)
		}
		s.agents[platform] = awss3assets.NewAsset(s.Stack, jsii.String("Agent-"+strings.ReplaceAll(platform, "/", "-")), &awss3assets.AssetProps{
			Path: jsii.String(file),
		})
	}
	s.vmRole = awsiam.NewRole(s.Stack, jsii.String("VMRole"), &awsiam.RoleProps{
		AssumedBy:   awsiam.NewServicePrincipal(jsii.String("ec2.amazonaws.com"), nil),
		Description: jsii.String("Slipway build VMs: no permissions; the agent calls no AWS API"),
	})
	profile := awsiam.NewInstanceProfile(s.Stack, jsii.String("VMInstanceProfile"), &awsiam.InstanceProfileProps{Role: s.vmRole})
	s.launchTemplates = map[string]awsec2.LaunchTemplate{}
	for _, p := range s.cfg.pools() {
		s.launchTemplates[p.Name] = awsec2.NewLaunchTemplate(s.Stack, jsii.String("Pool-"+p.Name), &awsec2.LaunchTemplateProps{
			LaunchTemplateName: jsii.String(s.name(p.Name)),
			// What every VM of the pool gets whatever the pool file or the
			// RunInstances call says; the image, type, subnet, root
			// volume and the VM's own user data (its certificate, the
			// agent install: fleet.LinuxUserData or WindowsUserData) come
			// with each launch.
			RequireImdsv2:                     jsii.Bool(true),
			HttpTokens:                        awsec2.LaunchTemplateHttpTokens_REQUIRED,
			HttpPutResponseHopLimit:           jsii.Number(2),
			InstanceProfile:                   profile,
			SecurityGroup:                     s.vmSG,
			InstanceInitiatedShutdownBehavior: awsec2.InstanceInitiatedShutdownBehavior_TERMINATE,
			// No block devices: EC2 merges a template's mappings with the
			// launch's by device name, and the root's name is the image's
			// (xvda, sda1, nvme0n1...), known only at launch, where the
			// fleet maps it encrypted. The launchers' IAM policy refuses
			// any unencrypted volume (ec2:Encrypted), so none can exist.
		})
	}
	return nil
}

// agentBinary is the file make build writes for a platform.
func agentBinary(platform string) string {
	name := "slipway-agent-" + strings.ReplaceAll(platform, "/", "-")
	if strings.HasPrefix(platform, "windows/") {
		name += ".exe"
	}
	return name
}

// environment is every function's: the deployment's names, the fleet's
// network, launch templates and agent binaries.
func (s *Stack) environment() (*map[string]*string, error) {
	templates := map[string]string{}
	for pool, lt := range s.launchTemplates {
		templates[pool] = *lt.LaunchTemplateId()
	}
	launchTemplates, err := json.Marshal(templates)
	if err != nil {
		return nil, err
	}
	// The assets' bucket and key are tokens: the JSON is built around them.
	var agents []string
	for _, platform := range s.cfg.platforms() {
		a := s.agents[platform]
		agents = append(agents, fmt.Sprintf(`%q:{"bucket":"%s","key":"%s"}`, platform, *a.S3BucketName(), *a.S3ObjectKey()))
	}
	subnets := s.vpc.SelectSubnets(s.subnets).SubnetIds
	env := map[string]*string{
		deploy.EnvDeployment:       jsii.String(s.cfg.Deployment),
		deploy.EnvTable:            s.table.TableName(),
		deploy.EnvCAKeyID:          s.caKey.KeyArn(),
		deploy.EnvSecretsKeyID:     s.secretsKey.KeyArn(),
		deploy.EnvStateMachineARN:  s.stateMachineARN(),
		deploy.EnvCleanupFunction:  jsii.String(s.name(statemachine.Cleanup)),
		deploy.EnvRefillFunction:   jsii.String(s.name(statemachine.Refill)),
		deploy.EnvLogBucket:        s.logBucket.BucketName(),
		deploy.EnvPoolsFile:        jsii.String("/opt/" + poolsFileName),
		deploy.EnvSubnets:          awscdk.Fn_Join(jsii.String(","), subnets),
		deploy.EnvVMSecurityGroups: s.vmSG.SecurityGroupId(),
		deploy.EnvOperators:        jsii.String(strings.Join(s.cfg.Operators, ",")),
		deploy.EnvMaxActiveStages:  jsii.String(strconv.Itoa(s.cfg.MaxActiveStages)),
		deploy.EnvMaxStageTimeout:  jsii.String(s.cfg.MaxStageTimeout.String()),
		deploy.EnvMaxIdleTimeout:   jsii.String(s.cfg.MaxIdleTimeout.String()),
		deploy.EnvLaunchTemplates:  jsii.String(string(launchTemplates)),
		deploy.EnvAgentObjects:     jsii.String("{" + strings.Join(agents, ",") + "}"),
	}
	return &env, nil
}

// stateMachineARN is built from the name, not taken from the resource: the
// functions the state machine invokes name it, which would be a cycle.
func (s *Stack) stateMachineARN() *string {
	return s.FormatArn(&awscdk.ArnComponents{
		Service: jsii.String("states"), Resource: jsii.String("stateMachine"),
		ResourceName: jsii.String(s.name("stage")), ArnFormat: awscdk.ArnFormat_COLON_RESOURCE_NAME,
	})
}

func (s *Stack) functionARN(name string) *string {
	return s.FormatArn(&awscdk.ArnComponents{
		Service: jsii.String("lambda"), Resource: jsii.String("function"),
		ResourceName: jsii.String(s.name(name)), ArnFormat: awscdk.ArnFormat_COLON_RESOURCE_NAME,
	})
}

// poolsFileName is the pools file in the layer every function has (/opt).
const poolsFileName = "pools.yaml"

// lambdas are the five functions, each with its own role.
func (s *Stack) lambdas() error {
	env, err := s.environment()
	if err != nil {
		return err
	}
	layerDir, err := os.MkdirTemp("", "slipway-pools-")
	if err != nil {
		return err
	}
	// The asset is staged (copied into cdk.out) when declared.
	defer func() { _ = os.RemoveAll(layerDir) }()
	if err := os.WriteFile(filepath.Join(layerDir, poolsFileName), s.cfg.Pools, 0o644); err != nil {
		return err
	}
	layer := awslambda.NewLayerVersion(s.Stack, jsii.String("Pools"), &awslambda.LayerVersionProps{
		Code:                    awslambda.Code_FromAsset(jsii.String(layerDir), nil),
		CompatibleRuntimes:      &[]awslambda.Runtime{awslambda.Runtime_PROVIDED_AL2023()},
		CompatibleArchitectures: &[]awslambda.Architecture{awslambda.Architecture_ARM_64()},
		Description:             jsii.String("The pools file: " + s.cfg.PoolsFile),
	})

	s.functions = map[string]awslambda.Function{}
	for _, f := range statemachine.Functions {
		zip := filepath.Join(s.cfg.AssetRoot, "bin", "lambda", f.Name+".zip")
		if _, err := os.Stat(zip); err != nil {
			return fmt.Errorf("function %s: %w (make lambdas makes it)", f.Name, err)
		}
		logs := s.logGroup("Logs-" + f.Name)
		role := awsiam.NewRole(s.Stack, jsii.String("Role-"+f.Name), &awsiam.RoleProps{
			AssumedBy:   awsiam.NewServicePrincipal(jsii.String("lambda.amazonaws.com"), nil),
			Description: jsii.String("Slipway " + f.Name + " function"),
		})
		role.AddToPolicy(awsiam.NewPolicyStatement(&awsiam.PolicyStatementProps{
			Actions:   jsii.Strings("logs:CreateLogStream", "logs:PutLogEvents"),
			Resources: jsii.Strings(*logs.LogGroupArn()),
		}))
		// Lambda attaches the function to the VPC through ENIs it makes
		// with the function's role; it checks these actions on "*".
		role.AddToPolicy(awsiam.NewPolicyStatement(&awsiam.PolicyStatementProps{
			Actions: jsii.Strings("ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets",
				"ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses"),
			Resources: jsii.Strings("*"),
		}))
		reserved := f.Reserved
		if f.Name == statemachine.API {
			reserved = s.cfg.APIConcurrency
		}
		var reservedConcurrency *float64
		if reserved > 0 {
			reservedConcurrency = jsii.Number(float64(reserved))
		}
		s.functions[f.Name] = awslambda.NewFunction(s.Stack, jsii.String("Function-"+f.Name), &awslambda.FunctionProps{
			ReservedConcurrentExecutions: reservedConcurrency,
			FunctionName:                 jsii.String(s.name(f.Name)),
			Description:                  jsii.String("Slipway " + f.Name),
			Runtime:                      awslambda.Runtime_PROVIDED_AL2023(),
			Architecture:                 awslambda.Architecture_ARM_64(),
			Handler:                      jsii.String("bootstrap"),
			Code:                         awslambda.Code_FromAsset(jsii.String(zip), nil),
			Timeout:                      awscdk.Duration_Seconds(jsii.Number(f.Timeout.Seconds())),
			MemorySize:                   jsii.Number(float64(f.MemoryMB)),
			Role:                         role,
			LogGroup:                     logs,
			Layers:                       &[]awslambda.ILayerVersion{layer},
			Environment:                  env,
			Vpc:                          s.vpc,
			VpcSubnets:                   s.subnets,
			SecurityGroups:               &[]awsec2.ISecurityGroup{s.functionsSG},
		})
	}
	s.grants()
	return nil
}

// grants are each function's permissions beyond its logs and ENIs: exactly
// the resources its handler uses.
func (s *Stack) grants() {
	f := s.functions
	for name, fn := range f {
		// Every function uses the table through its records (their
		// ddb.DB; TransactWriteItems is checked against the actions it
		// holds, item by item), writing only the partitions its handler
		// writes (deploy.Partitions, which `slipway local` enforces too),
		// and signs its own client certificate with the CA key at cold
		// start.
		s.statement(fn, &awsiam.PolicyStatementProps{
			Sid:       jsii.String("LeaseStoreReads"),
			Actions:   jsii.Strings(tableReads...),
			Resources: jsii.Strings(*s.table.TableArn()),
		})
		var partitions []string
		for _, p := range deploy.Partitions[name] {
			if strings.HasSuffix(p, "#") {
				p += "*"
			}
			partitions = append(partitions, p)
		}
		s.statement(fn, &awsiam.PolicyStatementProps{
			Sid:        jsii.String("LeaseStoreWritesItsPartitions"),
			Actions:    jsii.Strings(tableWrites...),
			Resources:  jsii.Strings(*s.table.TableArn()),
			Conditions: &map[string]any{"ForAllValues:StringLike": map[string]any{"dynamodb:LeadingKeys": partitions}},
		})
		s.statement(fn, &awsiam.PolicyStatementProps{
			Sid:       jsii.String("LeaseStoreIdleIndex"),
			Actions:   jsii.Strings("dynamodb:Query"),
			Resources: jsii.Strings(*s.table.TableArn() + "/index/" + ddb.IdleIndex),
		})
		s.allow(fn, s.caKey.KeyArn(), nil, "kms:Sign", "kms:GetPublicKey")
	}
	// Each function signs: its own client certificate (all call agents),
	// and the launchers the VMs' server certificates. The key policy names
	// them, and no one else may use the key.
	s.keyUsers(s.caKey, "SignTheDeploymentsCertificates", nil, slices.Collect(maps.Values(f)), "kms:Sign", "kms:GetPublicKey")
	// Stage secrets: the API seals (GenerateDataKey), init and step open
	// (Decrypt), always under the stage id's encryption context.
	stageContext := map[string]any{"Null": map[string]any{"kms:EncryptionContext:" + secret.ContextKey: "false"}}
	s.allow(f[statemachine.API], s.secretsKey.KeyArn(), stageContext, "kms:GenerateDataKey")
	s.keyUsers(s.secretsKey, "SealStageSecrets", stageContext, []awslambda.Function{f[statemachine.API]}, "kms:GenerateDataKey")
	for _, name := range []string{statemachine.Init, statemachine.RunGroup} {
		s.allow(f[name], s.secretsKey.KeyArn(), stageContext, "kms:Decrypt")
	}
	s.keyUsers(s.secretsKey, "OpenStageSecrets", stageContext, []awslambda.Function{f[statemachine.Init], f[statemachine.RunGroup]}, "kms:Decrypt")

	// The API starts a stage's execution and invokes the release on a
	// DELETE; the release asks for a refill.
	s.allow(f[statemachine.API], s.stateMachineARN(), nil, "states:StartExecution")
	s.allow(f[statemachine.API], s.functionARN(statemachine.Cleanup), nil, "lambda:InvokeFunction")
	s.allow(f[statemachine.Cleanup], s.functionARN(statemachine.Refill), nil, "lambda:InvokeFunction")
	// Refill's watchdog asks after the executions of stages that are not
	// progressing and hands those stuck to the release.
	s.allow(f[statemachine.Refill], s.FormatArn(&awscdk.ArnComponents{
		Service: jsii.String("states"), Resource: jsii.String("execution"),
		ResourceName: jsii.String(s.name("stage") + ":*"), ArnFormat: awscdk.ArnFormat_COLON_RESOURCE_NAME,
	}), nil, "states:DescribeExecution")
	s.allow(f[statemachine.Refill], s.functionARN(statemachine.Cleanup), nil, "lambda:InvokeFunction")

	// Step logs: RunGroup and the release archive them, the API reads
	// them back.
	objects := jsii.String(*s.logBucket.BucketArn() + "/*")
	for _, name := range []string{statemachine.RunGroup, statemachine.Cleanup} {
		s.allow(f[name], objects, nil, "s3:PutObject", "s3:AbortMultipartUpload")
	}
	s.allow(f[statemachine.API], objects, nil, "s3:GetObject")
	// Without s3:ListBucket, S3 answers a missing key 403, not 404: a log
	// not archived yet (a running step's) would read as forbidden.
	s.allow(f[statemachine.API], s.logBucket.BucketArn(), nil, "s3:ListBucket")

	// The fleet: init (a pool short of VMs) and refill launch; they and
	// cleanup terminate; refill lists (reconcile).
	for _, name := range []string{statemachine.Init, statemachine.Refill} {
		s.launcher(f[name])
	}
	// Only instances the deployment's templates launched: the deployment's
	// tag alone can be put on any instance by whoever may tag; EC2's
	// aws:ec2launchtemplate:id cannot.
	for _, name := range []string{statemachine.Init, statemachine.Refill, statemachine.Cleanup} {
		s.statement(f[name], &awsiam.PolicyStatementProps{
			Sid:       jsii.String("TerminateTheDeploymentsInstances"),
			Actions:   jsii.Strings("ec2:TerminateInstances"),
			Resources: jsii.Strings(*s.ec2ARN("instance/*")),
			Conditions: &map[string]any{"StringEquals": map[string]any{
				"aws:ResourceTag/" + fleet.TagDeployment:       s.cfg.Deployment,
				"aws:ResourceTag/" + fleet.TagLaunchTemplateID: s.templateIDs(),
			}},
		})
	}
	s.statement(f[statemachine.Refill], &awsiam.PolicyStatementProps{
		Actions: jsii.Strings("ec2:DescribeInstances"), Resources: jsii.Strings("*"),
	})
}

// templateIDs are the deployment's launch templates' ids, by pool name.
func (s *Stack) templateIDs() []*string {
	var ids []*string
	for _, name := range slices.Sorted(maps.Keys(s.launchTemplates)) {
		ids = append(ids, s.launchTemplates[name].LaunchTemplateId())
	}
	return ids
}

// keyUsers names functions' roles in a key's policy for actions, under
// conditions.
func (s *Stack) keyUsers(key awskms.Key, sid string, conditions map[string]any, fns []awslambda.Function, actions ...string) {
	var roles []awsiam.IPrincipal
	for _, fn := range fns {
		roles = append(roles, awsiam.NewArnPrincipal(fn.Role().RoleArn()))
	}
	props := &awsiam.PolicyStatementProps{Sid: jsii.String(sid), Principals: &roles, Actions: jsii.Strings(actions...), Resources: jsii.Strings("*")}
	if conditions != nil {
		props.Conditions = &conditions
	}
	key.AddToResourcePolicy(awsiam.NewPolicyStatement(props), jsii.Bool(false))
}

func (s *Stack) ec2ARN(resource string) *string {
	return s.FormatArn(&awscdk.ArnComponents{Service: jsii.String("ec2"), Resource: jsii.String(resource)})
}

// launcher may launch this deployment's VMs: only with one of its launch
// templates, tagged as its own, IMDSv2 required, volumes encrypted, with
// its VM role; it presigns the agents' downloads.
func (s *Stack) launcher(fn awslambda.Function) {
	var templates []*string
	for _, lt := range s.launchTemplates {
		templates = append(templates, s.ec2ARN("launch-template/"+*lt.LaunchTemplateId()))
	}
	s.statement(fn, &awsiam.PolicyStatementProps{
		Sid: jsii.String("LaunchWithTheDeploymentsTemplates"), Actions: jsii.Strings("ec2:RunInstances"), Resources: &templates,
	})
	s.statement(fn, &awsiam.PolicyStatementProps{
		Sid: jsii.String("LaunchTaggedInstances"), Actions: jsii.Strings("ec2:RunInstances"),
		Resources: jsii.Strings(*s.ec2ARN("instance/*")),
		Conditions: &map[string]any{
			"StringEquals": map[string]any{"aws:RequestTag/" + fleet.TagDeployment: s.cfg.Deployment, "ec2:MetadataHttpTokens": "required"},
			"ArnLike":      map[string]any{"ec2:LaunchTemplate": templates},
		},
	})
	s.statement(fn, &awsiam.PolicyStatementProps{
		Sid: jsii.String("LaunchEncryptedVolumes"), Actions: jsii.Strings("ec2:RunInstances"),
		Resources:  jsii.Strings(*s.ec2ARN("volume/*")),
		Conditions: &map[string]any{"Bool": map[string]any{"ec2:Encrypted": "true"}},
	})
	// The network: subnets and interfaces of the deployment's VPC, and
	// exactly the security groups the VMs get (the deployment's and those
	// the pools name), in that VPC.
	network := jsii.Strings(*s.ec2ARN("network-interface/*"), *s.ec2ARN("subnet/*"), *s.ec2ARN("security-group/" + *s.vmSG.SecurityGroupId()))
	groups := map[string]bool{}
	for _, p := range s.cfg.pools() {
		for _, sg := range p.SecurityGroups {
			if sg != validationNetwork.SecurityGroups[0] && !groups[sg] {
				groups[sg] = true
				*network = append(*network, s.ec2ARN("security-group/"+sg))
			}
		}
	}
	s.statement(fn, &awsiam.PolicyStatementProps{
		Sid: jsii.String("LaunchIntoTheDeploymentsVPC"), Actions: jsii.Strings("ec2:RunInstances"), Resources: network,
		Conditions: &map[string]any{"ArnEquals": map[string]any{"ec2:Vpc": s.ec2ARN("vpc/" + *s.vpc.VpcId())}},
	})
	// Images (any: the pools name them by id or SSM path), the pools' key
	// pairs by name, and spot requests where a pool is spot.
	images := jsii.Strings(*s.FormatArn(&awscdk.ArnComponents{Service: jsii.String("ec2"), Account: jsii.String(""), Resource: jsii.String("image/*")}))
	keyPairs, spot := map[string]bool{}, false
	for _, p := range s.cfg.pools() {
		if p.KeyPair != "" && !keyPairs[p.KeyPair] {
			keyPairs[p.KeyPair] = true
			*images = append(*images, s.ec2ARN("key-pair/"+p.KeyPair))
		}
		spot = spot || p.Spot.Enabled
	}
	if spot {
		*images = append(*images, s.ec2ARN("spot-instances-request/*"))
	}
	s.statement(fn, &awsiam.PolicyStatementProps{
		Sid: jsii.String("LaunchWithImagesAndKeyPairs"), Actions: jsii.Strings("ec2:RunInstances"), Resources: images,
	})
	s.statement(fn, &awsiam.PolicyStatementProps{
		Sid: jsii.String("TagWhatItLaunches"), Actions: jsii.Strings("ec2:CreateTags"),
		Resources:  jsii.Strings(*s.ec2ARN("instance/*"), *s.ec2ARN("volume/*")),
		Conditions: &map[string]any{"StringEquals": map[string]any{"ec2:CreateAction": "RunInstances"}},
	})
	s.statement(fn, &awsiam.PolicyStatementProps{
		Sid: jsii.String("PassTheVMRole"), Actions: jsii.Strings("iam:PassRole"), Resources: jsii.Strings(*s.vmRole.RoleArn()),
		Conditions: &map[string]any{"StringEquals": map[string]any{"iam:PassedToService": "ec2.amazonaws.com"}},
	})
	// DescribeImages has no resource-level permissions; the AMIs the
	// pools name by an SSM path are AWS's public parameters.
	s.statement(fn, &awsiam.PolicyStatementProps{
		Sid: jsii.String("ResolveImages"), Actions: jsii.Strings("ec2:DescribeImages"), Resources: jsii.Strings("*"),
	})
	// The AMI parameters the pools name: AWS's public ones (no account in
	// their ARN), and the account's own exactly.
	parameters := jsii.Strings(*s.FormatArn(&awscdk.ArnComponents{
		Service: jsii.String("ssm"), Account: jsii.String(""), Resource: jsii.String("parameter"),
		ResourceName: jsii.String("aws/service/*"), ArnFormat: awscdk.ArnFormat_SLASH_RESOURCE_NAME,
	}))
	for _, p := range s.cfg.pools() {
		path, ok := strings.CutPrefix(p.AMI, "resolve:ssm:")
		if ok && !strings.HasPrefix(path, "/aws/service/") {
			*parameters = append(*parameters, s.FormatArn(&awscdk.ArnComponents{
				Service: jsii.String("ssm"), Resource: jsii.String("parameter"),
				ResourceName: jsii.String(strings.TrimPrefix(path, "/")), ArnFormat: awscdk.ArnFormat_SLASH_RESOURCE_NAME,
			}))
		}
	}
	s.statement(fn, &awsiam.PolicyStatementProps{
		Sid: jsii.String("ResolveImageParameters"), Actions: jsii.Strings("ssm:GetParameter"), Resources: parameters,
	})
	// Presigning signs with the launcher's role: it may read exactly the
	// agent binaries, nothing else of the assets bucket.
	var agents []*string
	for _, platform := range s.cfg.platforms() {
		a := s.agents[platform]
		agents = append(agents, jsii.String("arn:"+*awscdk.Aws_PARTITION()+":s3:::"+*a.S3BucketName()+"/"+*a.S3ObjectKey()))
	}
	s.statement(fn, &awsiam.PolicyStatementProps{Sid: jsii.String("PresignAgentDownloads"), Actions: jsii.Strings("s3:GetObject"), Resources: &agents})
}

// tableActions are what the records' calls need (ddb.DB): GetItem, UpdateItem
// and Query, and inside TransactWriteItems Put, Update, Delete and
// ConditionCheck. The writes are bound to each function's partitions.
var (
	tableReads   = []string{"dynamodb:GetItem", "dynamodb:Query", "dynamodb:ConditionCheckItem"}
	tableWrites  = []string{"dynamodb:UpdateItem", "dynamodb:PutItem", "dynamodb:DeleteItem"}
	tableActions = append(slices.Clone(tableReads), tableWrites...)
)

func (s *Stack) statement(fn awslambda.Function, props *awsiam.PolicyStatementProps) {
	fn.Role().AddToPrincipalPolicy(awsiam.NewPolicyStatement(props))
}

func (s *Stack) allow(fn awslambda.Function, resource *string, conditions map[string]any, actions ...string) {
	props := &awsiam.PolicyStatementProps{Actions: jsii.Strings(actions...), Resources: &[]*string{resource}}
	if conditions != nil {
		props.Conditions = &conditions
	}
	s.statement(fn, props)
}

// orchestration is the state machine, the schedule and the release on an
// execution that failed, timed out or was stopped.
func (s *Stack) orchestration() error {
	arns := map[string]string{}
	for name, fn := range s.functions {
		arns[name] = *fn.FunctionArn()
	}
	definition, err := statemachine.Substitute(arns)
	if err != nil {
		return err
	}
	logs := s.logGroup("StateMachineLogs")
	s.stateMachine = awsstepfunctions.NewStateMachine(s.Stack, jsii.String("Stage"), &awsstepfunctions.StateMachineProps{
		StateMachineName: jsii.String(s.name("stage")),
		StateMachineType: awsstepfunctions.StateMachineType_STANDARD,
		DefinitionBody:   awsstepfunctions.DefinitionBody_FromString(jsii.String(string(definition))),
		Logs: &awsstepfunctions.LogOptions{
			// Errors only, without execution data: inputs and outputs carry
			// stage ids and step results, and ALL logs every transition.
			Destination: logs, Level: awsstepfunctions.LogLevel_ERROR, IncludeExecutionData: jsii.Bool(false),
		},
		TracingEnabled: jsii.Bool(true),
	})
	for _, name := range []string{statemachine.Init, statemachine.RunGroup, statemachine.Cleanup} {
		s.functions[name].GrantInvoke(s.stateMachine)
	}

	awsscheduler.NewSchedule(s.Stack, jsii.String("Refill"), &awsscheduler.ScheduleProps{
		ScheduleName: jsii.String(s.name("refill")),
		Description:  jsii.String("Refill, reap and reconcile every pool"),
		Schedule:     awsscheduler.ScheduleExpression_Rate(awscdk.Duration_Minutes(jsii.Number(1))),
		Target: awsschedulertargets.NewLambdaInvoke(s.functions[statemachine.Refill], &awsschedulertargets.ScheduleTargetBaseProps{
			Input:         awsscheduler.ScheduleTargetInput_FromObject(map[string]any{}),
			RetryAttempts: jsii.Number(0), // the next minute's run is the retry
		}),
	})

	awsevents.NewRule(s.Stack, jsii.String("ReleaseOnExecutionEnd"), &awsevents.RuleProps{
		Description: jsii.String("Release the VM of a stage whose execution failed, timed out or was stopped"),
		EventPattern: &awsevents.EventPattern{
			Source:     jsii.Strings("aws.states"),
			DetailType: jsii.Strings("Step Functions Execution Status Change"),
			Detail: &map[string]any{
				"status":          []string{"FAILED", "TIMED_OUT", "ABORTED"},
				"stateMachineArn": []string{*s.stateMachine.StateMachineArn()},
			},
		},
		Targets: &[]awsevents.IRuleTarget{awseventstargets.NewLambdaFunction(s.functions[statemachine.Cleanup], &awseventstargets.LambdaFunctionProps{
			RetryAttempts: jsii.Number(8), MaxEventAge: awscdk.Duration_Hours(jsii.Number(2)),
		})},
	})
	return nil
}

// The API's throttle, for all callers together.
const (
	apiRate  = 200
	apiBurst = 400
)

// apiPolicy is the API's resource policy: calls from the deployment's
// account (and the accounts apiPrincipals name), and, when apiPrincipals
// are given, from those principals only. IAM auth still needs each
// caller's own execute-api:Invoke (DelegatePolicy).
func (s *Stack) apiPolicy() awsiam.PolicyDocument {
	accounts := map[string]bool{s.cfg.Account: true}
	for _, arn := range s.cfg.APIPrincipals {
		accounts[strings.Split(arn, ":")[4]] = true
	}
	var principals []awsiam.IPrincipal
	for _, account := range slices.Sorted(maps.Keys(accounts)) {
		principals = append(principals, awsiam.NewAccountPrincipal(jsii.String(account)))
	}
	statements := []awsiam.PolicyStatement{awsiam.NewPolicyStatement(&awsiam.PolicyStatementProps{
		Sid: jsii.String("CallsFromTheDeploymentsAccounts"), Principals: &principals,
		Actions: jsii.Strings("execute-api:Invoke"), Resources: jsii.Strings("execute-api:/*"),
	})}
	if len(s.cfg.APIPrincipals) > 0 {
		statements = append(statements, awsiam.NewPolicyStatement(&awsiam.PolicyStatementProps{
			Sid: jsii.String("OnlyTheNamedPrincipals"), Effect: awsiam.Effect_DENY, Principals: &[]awsiam.IPrincipal{awsiam.NewAnyPrincipal()},
			Actions: jsii.Strings("execute-api:Invoke"), Resources: jsii.Strings("execute-api:/*"),
			Conditions: &map[string]any{"ArnNotLike": map[string]any{"aws:PrincipalArn": s.cfg.APIPrincipals}},
		}))
	}
	return awsiam.NewPolicyDocument(&awsiam.PolicyDocumentProps{Statements: &statements})
}

// delegateAPI is the delegate API: REST, a method for each operation of
// its OpenAPI document (nothing else reaches the handler), IAM auth on
// every method, the parameters validated, access logs; and the policy a
// delegate's role needs to call it.
func (s *Stack) delegateAPI() error {
	routes, err := apiRoutes(stage.OpenAPI)
	if err != nil {
		return err
	}
	access := s.logGroup("APIAccessLogs")
	s.api = awsapigateway.NewRestApi(s.Stack, jsii.String("API"), &awsapigateway.RestApiProps{
		RestApiName:                 jsii.String(s.name("api")),
		Policy:                      s.apiPolicy(),
		Description:                 jsii.String("Slipway delegate API (SigV4)"),
		EndpointTypes:               &[]awsapigateway.EndpointType{awsapigateway.EndpointType_REGIONAL},
		CloudWatchRole:              jsii.Bool(true),
		CloudWatchRoleRemovalPolicy: awscdk.RemovalPolicy_DESTROY,
		DeployOptions: &awsapigateway.StageOptions{
			StageName:            jsii.String("api"),
			AccessLogDestination: awsapigateway.NewLogGroupLogDestination(access),
			AccessLogFormat:      awsapigateway.AccessLogFormat_JsonWithStandardFields(nil),
			LoggingLevel:         awsapigateway.MethodLoggingLevel_ERROR,
			DataTraceEnabled:     jsii.Bool(false), // bodies carry secrets
			TracingEnabled:       jsii.Bool(true),
			ThrottlingRateLimit:  jsii.Number(apiRate),
			ThrottlingBurstLimit: jsii.Number(apiBurst),
		},
	})
	validator := s.api.AddRequestValidator(jsii.String("Validator"), &awsapigateway.RequestValidatorOptions{
		RequestValidatorName: jsii.String(s.name("requests")), ValidateRequestParameters: jsii.Bool(true), ValidateRequestBody: jsii.Bool(true),
	})
	object := s.api.AddModel(jsii.String("JSONObject"), &awsapigateway.ModelOptions{
		ModelName: jsii.String("JSONObject"), ContentType: jsii.String("application/json"),
		Description: jsii.String("A JSON object: the handler validates the rest against the OpenAPI document"),
		Schema:      &awsapigateway.JsonSchema{Schema: awsapigateway.JsonSchemaVersion_DRAFT4, Type: awsapigateway.JsonSchemaType_OBJECT},
	})
	// Refusals in the API's own error shape, as the handler's; a throttled
	// call names the limit.
	for id, r := range map[string]struct {
		kind          awsapigateway.ResponseType
		status, code  string
		message       string
		retryAfterSec string
	}{
		"BadBody":       {awsapigateway.ResponseType_BAD_REQUEST_BODY(), "400", "invalid", "the body is not a JSON object", ""},
		"BadParameters": {awsapigateway.ResponseType_BAD_REQUEST_PARAMETERS(), "400", "invalid", "a required parameter is missing", ""},
		"Throttled": {awsapigateway.ResponseType_THROTTLED(), "429", "throttled",
			fmt.Sprintf("the API takes %d requests a second (bursts of %d) from all callers together: retry after a moment", apiRate, apiBurst), "1"},
	} {
		opts := &awsapigateway.GatewayResponseOptions{
			Type: r.kind, StatusCode: jsii.String(r.status),
			Templates: &map[string]*string{"application/json": jsii.String(`{"error":{"code":"` + r.code + `","message":"` + r.message + `"}}`)},
		}
		if r.retryAfterSec != "" {
			opts.ResponseHeaders = &map[string]*string{"Retry-After": jsii.String("'" + r.retryAfterSec + "'")}
		}
		s.api.AddGatewayResponse(jsii.String(id), opts)
	}
	integration := awsapigateway.NewLambdaIntegration(s.functions[statemachine.API], &awsapigateway.LambdaIntegrationOptions{
		// One permission for the API, not one per method.
		Proxy: jsii.Bool(true), ScopePermissionToMethod: jsii.Bool(false),
	})
	for _, r := range routes {
		resource := s.api.Root().ResourceForPath(jsii.String(r.path))
		params := map[string]*bool{}
		for name, required := range r.parameters {
			params[name] = jsii.Bool(required)
		}
		opts := &awsapigateway.MethodOptions{
			AuthorizationType: awsapigateway.AuthorizationType_IAM,
			RequestValidator:  validator,
			RequestParameters: &params,
			OperationName:     jsii.String(r.operation),
		}
		if r.body {
			opts.RequestModels = &map[string]awsapigateway.IModel{"application/json": object}
		}
		resource.AddMethod(jsii.String(r.method), integration, opts)
	}
	delegate := awsiam.NewManagedPolicy(s.Stack, jsii.String("DelegatePolicy"), &awsiam.ManagedPolicyProps{
		ManagedPolicyName: jsii.String(s.name("delegate")),
		Description:       jsii.String("Attach to the role a delegate calls the Slipway API with"),
		Statements: &[]awsiam.PolicyStatement{awsiam.NewPolicyStatement(&awsiam.PolicyStatementProps{
			Actions: jsii.Strings("execute-api:Invoke"), Resources: jsii.Strings(*s.api.ArnForExecuteApi(jsii.String("*"), jsii.String("/*"), jsii.String("api"))),
		})},
	})
	awscdk.NewCfnOutput(s.Stack, jsii.String("ApiUrl"), &awscdk.CfnOutputProps{Value: s.api.Url(), Description: jsii.String("The delegate API (SigV4, service execute-api)")})
	awscdk.NewCfnOutput(s.Stack, jsii.String("DelegatePolicyArn"), &awscdk.CfnOutputProps{Value: delegate.ManagedPolicyArn()})
	awscdk.NewCfnOutput(s.Stack, jsii.String("TableName"), &awscdk.CfnOutputProps{Value: s.table.TableName()})
	awscdk.NewCfnOutput(s.Stack, jsii.String("StepLogBucket"), &awscdk.CfnOutputProps{Value: s.logBucket.BucketName()})
	awscdk.NewCfnOutput(s.Stack, jsii.String("StateMachineArn"), &awscdk.CfnOutputProps{Value: s.stateMachine.StateMachineArn()})
	return nil
}
