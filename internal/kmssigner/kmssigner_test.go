package kmssigner_test

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/internal/awstest"
	"github.com/slipway-ci/slipway/internal/kmssigner"
	"github.com/slipway-ci/slipway/internal/pki"
)

func TestKMSSignedCertificatesVerify(t *testing.T) {
	client := awstest.KMS(t)
	ctx := context.Background()
	signer, err := kmssigner.New(ctx, client, awstest.SigningKey(t, client))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.NewCA(signer, "Slipway test CA", 24*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, _ := pki.GenerateKey()
	server, err := ca.IssueServer("vm-0123456789abcdef0123", key.Public(), time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	client2, err := ca.IssueClient(key.Public(), 10*time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	if _, err := server.Verify(x509.VerifyOptions{Roots: roots, DNSName: pki.ServerName("vm-0123456789abcdef0123")}); err != nil {
		t.Fatalf("server certificate signed in KMS: %v", err)
	}
	if _, err := client2.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("client certificate signed in KMS: %v", err)
	}
}

func TestKMSSignerRefusesOtherKeys(t *testing.T) {
	client := awstest.KMS(t)
	ctx := context.Background()
	if _, err := kmssigner.New(ctx, client, "no-such-key"); err == nil {
		t.Fatal("accepted a key that does not exist")
	}
	out, err := client.CreateKey(ctx, nil) // a symmetric key
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kmssigner.New(ctx, client, *out.KeyMetadata.KeyId); err == nil {
		t.Fatal("accepted a symmetric key")
	}
}
