package pki

import (
	"crypto/ecdsa"
	"crypto/tls"
	"sync"
	"time"
)

// Identity is the orchestrator's identity towards agents: a key made when a
// function environment starts, and a short-lived client certificate from the
// CA, issued again when it nears its end. No long-lived client key exists.
type Identity struct {
	CA *CA
	// Lifetime of each certificate (default DefaultClientLifetime); one is
	// renewed in its last quarter.
	Lifetime time.Duration

	mu       sync.Mutex
	key      *ecdsa.PrivateKey
	cert     *tls.Certificate
	notAfter time.Time
}

// DefaultClientLifetime is an orchestrator certificate's: a function's
// certificate that leaks (with its environment) opens the agents for an
// hour at most, and a warm function renews it every 45 minutes (one
// kms:Sign).
const DefaultClientLifetime = time.Hour

// Certificate returns the current client certificate, issuing one when none
// is valid for a while yet. It suits client.Config.Certificate.
func (id *Identity) Certificate() (*tls.Certificate, error) {
	id.mu.Lock()
	defer id.mu.Unlock()
	lifetime := id.Lifetime
	if lifetime <= 0 {
		lifetime = DefaultClientLifetime
	}
	now := time.Now()
	if id.cert != nil && now.Before(id.notAfter.Add(-lifetime/4)) {
		return id.cert, nil
	}
	if id.key == nil {
		key, err := GenerateKey()
		if err != nil {
			return nil, err
		}
		id.key = key
	}
	cert, err := id.CA.IssueClient(id.key.Public(), lifetime, now)
	if err != nil {
		return nil, err
	}
	id.cert = &tls.Certificate{Certificate: [][]byte{cert.Raw, id.CA.Cert.Raw}, PrivateKey: id.key, Leaf: cert}
	id.notAfter = cert.NotAfter
	return id.cert, nil
}
