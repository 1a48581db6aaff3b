// Package localaws makes clients of the local stand-ins for AWS services
// (DynamoDB Local, local-kms, the local Step Functions and Lambda of
// `slipway local`): static credentials and an explicit endpoint,
// so nothing ever looks for AWS credentials or calls AWS.
package localaws

import (
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/lambda"
	"github.com/aws/aws-sdk-go-v2/service/sfn"

	"github.com/slipway-ci/slipway/internal/awsclient"
)

// Variables that name the stand-ins' URLs (set by .ci/with-services).
const (
	DynamoDBEndpointEnv = "SLIPWAY_DYNAMODB_ENDPOINT"
	KMSEndpointEnv      = "SLIPWAY_KMS_ENDPOINT"
)

func config() aws.Config {
	return aws.Config{
		Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("local", "local", ""),
		HTTPClient: awsclient.HTTPClient(),
	}
}

// DynamoDB returns a client of the DynamoDB at endpoint.
func DynamoDB(endpoint string, opts ...func(*dynamodb.Options)) *dynamodb.Client {
	return dynamodb.NewFromConfig(config(), append([]func(*dynamodb.Options){func(o *dynamodb.Options) {
		o.BaseEndpoint = aws.String(endpoint)
		// DynamoDB Local's error responses carry a wrong CRC32.
		o.DisableValidateResponseChecksum = true
	}}, opts...)...)
}

// KMS returns a client of the KMS at endpoint.
func KMS(endpoint string) *kms.Client {
	return kms.NewFromConfig(config(), func(o *kms.Options) { o.BaseEndpoint = aws.String(endpoint) })
}

// StepFunctions returns a client of the Step Functions at endpoint.
func StepFunctions(endpoint string) *sfn.Client {
	return sfn.NewFromConfig(config(), func(o *sfn.Options) { o.BaseEndpoint = aws.String(endpoint) })
}

// Lambda returns a client of the Lambda Invoke API at endpoint.
func Lambda(endpoint string) *lambda.Client {
	return lambda.NewFromConfig(config(), func(o *lambda.Options) { o.BaseEndpoint = aws.String(endpoint) })
}
