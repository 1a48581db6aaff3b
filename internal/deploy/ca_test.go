package deploy

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/internal/awstest"
	"github.com/slipway-ci/slipway/internal/kmssigner"
	"github.com/slipway-ci/slipway/internal/pki"
)

// TestCACreatedOnceUnderRace: ten cold starts at once, each with the KMS
// key, agree on one CA certificate.
func TestCACreatedOnceUnderRace(t *testing.T) {
	db, table := awstest.Table(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	s := &CARecord{DB: db, Table: table}
	kms := awstest.KMS(t)
	signer, err := kmssigner.New(ctx, kms, awstest.SigningKey(t, kms))
	if err != nil {
		t.Fatal(err)
	}
	cas := make([]*pki.CA, 10)
	var wg sync.WaitGroup
	for i := range cas {
		wg.Go(func() {
			ca, err := pki.EnsureCA(ctx, s, signer, "Slipway test", 24*time.Hour)
			if err != nil {
				t.Error(err)
				return
			}
			cas[i] = ca
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for _, ca := range cas[1:] {
		if !ca.Cert.Equal(cas[0].Cert) {
			t.Fatal("two CA certificates in use")
		}
	}
	// Another key cannot adopt the stored certificate.
	other, err := kmssigner.New(ctx, kms, awstest.SigningKey(t, kms))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pki.EnsureCA(ctx, s, other, "Slipway test", time.Hour); err == nil {
		t.Fatal("a certificate for another key was used")
	}
}
