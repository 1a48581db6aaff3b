package awstest

import (
	"context"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/slipway-ci/slipway/internal/localaws"
)

// KMS returns a client of local-kms.
func KMS(t testing.TB) *kms.Client {
	t.Helper()
	return localaws.KMS(KMSEndpoint(t))
}

// KMSEndpoint is local-kms's URL.
func KMSEndpoint(t testing.TB) string {
	t.Helper()
	return endpoint(t, localaws.KMSEndpointEnv, "local-kms")
}

// SigningKey creates an ECC_NIST_P256 SIGN_VERIFY key, as the deployment's
// CA key, and returns its id.
func SigningKey(t testing.TB, c *kms.Client) string {
	t.Helper()
	out, err := c.CreateKey(context.Background(), &kms.CreateKeyInput{
		KeySpec: types.KeySpecEccNistP256, KeyUsage: types.KeyUsageTypeSignVerify,
		Description: aws.String("slipway test CA"),
	})
	if err != nil {
		t.Fatal(err)
	}
	return aws.ToString(out.KeyMetadata.KeyId)
}

// SymmetricKey creates a SYMMETRIC_DEFAULT key, as the deployment's key for
// stage secrets, and returns its id.
func SymmetricKey(t testing.TB, c *kms.Client) string {
	t.Helper()
	out, err := c.CreateKey(context.Background(), &kms.CreateKeyInput{Description: aws.String("slipway test secrets")})
	if err != nil {
		t.Fatal(err)
	}
	return aws.ToString(out.KeyMetadata.KeyId)
}
