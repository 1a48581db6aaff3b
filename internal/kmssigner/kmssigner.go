// Package kmssigner is the deployment CA's crypto.Signer: the private key
// never leaves KMS. It is its own package so that the agent, which needs the
// PKI's names but never signs, does not link the KMS client.
package kmssigner

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// API is the part of the KMS client the signer uses; *kms.Client
// satisfies it.
type API interface {
	GetPublicKey(ctx context.Context, params *kms.GetPublicKeyInput, optFns ...func(*kms.Options)) (*kms.GetPublicKeyOutput, error)
	Sign(ctx context.Context, params *kms.SignInput, optFns ...func(*kms.Options)) (*kms.SignOutput, error)
}

// Signer is a crypto.Signer whose private key never leaves KMS: an
// ECC_NIST_P256 SIGN_VERIFY key signing SHA-256 digests with ECDSA. KMS
// returns ASN.1 DER signatures, the form x509 wants.
type Signer struct {
	api   API
	keyID string
	pub   *ecdsa.PublicKey
	// Timeout bounds each Sign call (crypto.Signer has no context).
	Timeout time.Duration
}

var _ crypto.Signer = (*Signer)(nil)

// New reads the key's public half and checks that it can sign as
// the CA's key must.
func New(ctx context.Context, api API, keyID string) (*Signer, error) {
	out, err := api.GetPublicKey(ctx, &kms.GetPublicKeyInput{KeyId: aws.String(keyID)})
	if err != nil {
		return nil, fmt.Errorf("kms key %s: %w", keyID, err)
	}
	if out.KeySpec != types.KeySpecEccNistP256 || out.KeyUsage != types.KeyUsageTypeSignVerify ||
		!slices.Contains(out.SigningAlgorithms, types.SigningAlgorithmSpecEcdsaSha256) {
		return nil, fmt.Errorf("kms key %s is %s for %s: want ECC_NIST_P256 for SIGN_VERIFY with ECDSA_SHA_256", keyID, out.KeySpec, out.KeyUsage)
	}
	pub, err := x509.ParsePKIXPublicKey(out.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("kms key %s: public key: %w", keyID, err)
	}
	ec, ok := pub.(*ecdsa.PublicKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, fmt.Errorf("kms key %s: public key is %T, not P-256", keyID, pub)
	}
	return &Signer{api: api, keyID: keyID, pub: ec, Timeout: 10 * time.Second}, nil
}

// Public is the key's public half.
func (s *Signer) Public() crypto.PublicKey { return s.pub }

// Sign signs a SHA-256 digest in KMS.
func (s *Signer) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts == nil || opts.HashFunc() != crypto.SHA256 || len(digest) != crypto.SHA256.Size() {
		return nil, errors.New("kms signer: want a SHA-256 digest")
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.Timeout)
	defer cancel()
	out, err := s.api.Sign(ctx, &kms.SignInput{
		KeyId:            aws.String(s.keyID),
		Message:          digest,
		MessageType:      types.MessageTypeDigest,
		SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256,
	})
	if err != nil {
		return nil, fmt.Errorf("kms sign with %s: %w", s.keyID, err)
	}
	return out.Signature, nil
}
