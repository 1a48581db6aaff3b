// Package localaws makes clients of the local stand-ins for AWS services
// (DynamoDB Local, local-kms): static credentials and an explicit endpoint,
// so nothing ever looks for AWS credentials or calls AWS.
package localaws

import (
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/kms"
)

// Variables that name the stand-ins' URLs (set by .ci/with-services).
const (
	DynamoDBEndpointEnv = "SLIPWAY_DYNAMODB_ENDPOINT"
	KMSEndpointEnv      = "SLIPWAY_KMS_ENDPOINT"
)

func config() aws.Config {
	return aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("local", "local", "")}
}

// DynamoDB returns a client of the DynamoDB at endpoint.
func DynamoDB(endpoint string) *dynamodb.Client {
	return dynamodb.NewFromConfig(config(), func(o *dynamodb.Options) {
		o.BaseEndpoint = aws.String(endpoint)
		// DynamoDB Local's error responses carry a wrong CRC32.
		o.DisableValidateResponseChecksum = true
	})
}

// KMS returns a client of the KMS at endpoint.
func KMS(endpoint string) *kms.Client {
	return kms.NewFromConfig(config(), func(o *kms.Options) { o.BaseEndpoint = aws.String(endpoint) })
}
