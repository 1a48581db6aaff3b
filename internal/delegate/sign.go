package delegate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// signer signs requests for API Gateway's IAM auth: SigV4, service
// execute-api.
type signer struct {
	credentials aws.CredentialsProvider
	region      string
	now         func() time.Time
	v4          *v4.Signer
}

func (s *signer) sign(ctx context.Context, req *http.Request, payload []byte) error {
	creds, err := s.credentials.Retrieve(ctx)
	if err != nil {
		return fmt.Errorf("sign the request: AWS credentials: %w", err)
	}
	sum := sha256.Sum256(payload)
	if err := s.v4.SignHTTP(ctx, creds, req, hex.EncodeToString(sum[:]), "execute-api", s.region, s.now()); err != nil {
		return fmt.Errorf("sign the request: %w", err)
	}
	return nil
}

// IsLoopback says whether host is this machine (slipway local): its
// requests go unsigned.
func IsLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// regionOf reads the region from an API Gateway host name:
// <api id>.execute-api.<region>.amazonaws.com (or .amazonaws.com.cn).
func regionOf(host string) string {
	parts := strings.Split(host, ".")
	if len(parts) >= 5 && parts[1] == "execute-api" && parts[3] == "amazonaws" {
		return parts[2]
	}
	return ""
}
