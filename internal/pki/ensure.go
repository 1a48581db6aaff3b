package pki

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// CAStore keeps the deployment's CA certificate where every function (and
// through them, every VM's user data) can read it.
type CAStore interface {
	// LoadCA returns the stored certificate (DER), or nil when there is none.
	LoadCA(ctx context.Context) ([]byte, error)
	// StoreCAIfAbsent stores der unless a certificate is stored already, and
	// returns the one stored afterwards: der, or the one that was there.
	StoreCAIfAbsent(ctx context.Context, der []byte) ([]byte, error)
}

// EnsureCA returns the deployment's CA, creating its certificate the first
// time. Any number of functions may call it at once: one certificate wins
// the conditional write and all of them use it.
func EnsureCA(ctx context.Context, store CAStore, signer crypto.Signer, commonName string, lifetime time.Duration) (*CA, error) {
	der, err := store.LoadCA(ctx)
	if err != nil {
		return nil, fmt.Errorf("load CA certificate: %w", err)
	}
	if der == nil {
		ca, err := NewCA(signer, commonName, lifetime, time.Now())
		if err != nil {
			return nil, err
		}
		if der, err = store.StoreCAIfAbsent(ctx, ca.Cert.Raw); err != nil {
			return nil, fmt.Errorf("store CA certificate: %w", err)
		}
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("stored CA certificate: %w", err)
	}
	pub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(signer.Public()) {
		return nil, errors.New("the stored CA certificate is not for the CA key: was the key replaced?")
	}
	if time.Until(cert.NotAfter) < 0 {
		return nil, fmt.Errorf("the stored CA certificate expired on %s", cert.NotAfter.Format(time.DateOnly))
	}
	return &CA{Cert: cert, Signer: signer}, nil
}
