package main

import (
	"github.com/aws/jsii-runtime-go"
	"github.com/cdklabs/cdk-nag-go/cdknag/v2"
)

// suppressions are the AwsSolutions findings this stack accepts, each with
// why: cdk-nag reports them, and each is a choice made on purpose.
func (s *Stack) suppressions() {
	stack := func(id, reason string, appliesTo ...string) {
		sup := &cdknag.NagPackSuppression{Id: jsii.String(id), Reason: jsii.String(reason)}
		if len(appliesTo) > 0 {
			var a []any
			for _, x := range appliesTo {
				a = append(a, cdknag.RegexAppliesTo{Regex: jsii.String(x)})
			}
			sup.AppliesTo = &a
		}
		cdknag.NagSuppressions_AddStackSuppressions(s.Stack, &[]*cdknag.NagPackSuppression{sup}, jsii.Bool(true))
	}
	stack("AwsSolutions-IAM5",
		"Lambda attaches VPC functions through ENIs it creates with the function's role and checks the ENI actions on '*'; "+
			"ec2:DescribeInstances, ec2:DescribeImages and Step Functions' log delivery and X-Ray actions have no resource-level permissions",
		`/^Resource::\*$/`)
	stack("AwsSolutions-IAM5",
		"Instance, volume, network-interface, subnet and security-group ids are not known before launch; each statement is bound "+
			"by a condition instead (the deployment's tag, IMDSv2, encryption, the deployment's launch templates, CreateAction=RunInstances)",
		`/^Resource::arn:<AWS::Partition>:ec2:[a-z0-9-]+:[0-9]{12}:(instance|volume|network-interface|subnet|security-group|spot-instances-request)\/\*$/`)
	stack("AwsSolutions-IAM5",
		"Pools name their AMIs by id or by AWS's public SSM parameters; the image is chosen per pool at launch",
		`/^Resource::arn:<AWS::Partition>:ec2:[a-z0-9-]+::image\/\*$/`,
		`/^Resource::arn:<AWS::Partition>:ssm:[a-z0-9-]+::parameter\/aws\/service\/\*$/`)
	stack("AwsSolutions-IAM5",
		"Step log objects are named by stage and step id, created at run time; access is limited to the one log bucket",
		`/^Resource::<StepLogs[0-9A-F]+\.Arn>\/\*$/`)
	stack("AwsSolutions-IAM5",
		"The state machine (init, rungroup, cleanup) and the schedule (refill) may invoke any version of the functions they call: what the CDK grants give",
		`/^Resource::<Function.*\.Arn>:\*$/`)
	stack("AwsSolutions-IAM5",
		"The delegate policy is for the CI system's role: it calls every method and path of the API (internal/stage/openapi.yaml) on its one stage",
		`/^Resource::arn:<AWS::Partition>:execute-api:[a-z0-9-]+:[0-9]{12}:<API[0-9A-F]+>\/api\/\*\/\*$/`)
	stack("AwsSolutions-IAM5",
		"Executions are named by stage id and creation time, made at run time; refill's watchdog may only describe those of the deployment's one state machine",
		`/^Resource::arn:<AWS::Partition>:states:[a-z0-9-]+:[0-9]{12}:execution:[a-z0-9-]+-stage:\*$/`)
	stack("AwsSolutions-IAM4",
		"API Gateway's account-level CloudWatch role (access logs) uses AWS's AmazonAPIGatewayPushToCloudWatchLogs, the documented policy for it",
		`/^Policy::arn:<AWS::Partition>:iam::aws:policy\/service-role\/AmazonAPIGatewayPushToCloudWatchLogs$/`)
	stack("AwsSolutions-APIG3",
		"IAM (SigV4) authorizes every method: only principals with the delegate policy reach the API; WAF would add about $6 a month to an idle deployment")
	stack("AwsSolutions-COG4",
		"The API authorizes with IAM (SigV4), as a CI delegate calls it with a role, not a user pool")
	stack("AwsSolutions-S1",
		"The step log bucket is written and read only by the deployment's functions, through their roles; its access is in CloudTrail")
	stack("AwsSolutions-SNS2",
		"Alarm notifications carry alarm names and states only; a customer key for them would cost $1 a month")
	stack("AwsSolutions-VPC7",
		"Flow logs of build VMs' traffic would cost per GB of every build's downloads; enable them on the VPC when needed")
	stack("AwsSolutions-SF1",
		"The state machine logs errors only, without execution data: ALL would log every transition's input and output (stage ids, step "+
			"results) for each of thousands of loops; the execution history keeps every event for 90 days")
	stack("AwsSolutions-L1",
		"The functions run on provided.al2023, the current OS-only runtime; the flagged function is CDK's own custom resource, if any")
}
