// Package pki owns Slipway's certificates: the deployment CA, the per-VM server
// certificates the agents present, and the short-lived client certificates the
// orchestrator presents to them.
//
// Every signature goes through a crypto.Signer, so the CA key can live in a file
// (locally) or in KMS (in AWS) without this package knowing which.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"regexp"
	"time"
)

// OrchestratorCN is the subject common name of every orchestrator client
// certificate. Agents accept no other client identity.
const OrchestratorCN = "slipway-orchestrator"

// VMDomain is the DNS suffix of the names in per-VM server certificates.
const VMDomain = "vm.slipway.internal"

// ClockSkew is how far back NotBefore is set, so a VM or function whose clock
// runs a little behind still accepts a certificate issued a moment ago.
const ClockSkew = 5 * time.Minute

var launchIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9-]{0,62}$`)

// ServerName is the DNS name in the server certificate of the VM with the given
// launch id; the client verifies it so it talks to the VM it meant.
func ServerName(launchID string) string {
	return launchID + "." + VMDomain
}

// ValidateLaunchID reports whether id can name a VM: it becomes a DNS label.
func ValidateLaunchID(id string) error {
	if !launchIDPattern.MatchString(id) {
		return fmt.Errorf("launch id %q: want 1-63 letters, digits or '-', not starting with '-'", id)
	}
	return nil
}

// CA issues certificates with a CA certificate and the signer of its key.
type CA struct {
	Cert   *x509.Certificate
	Signer crypto.Signer
}

// GenerateKey returns a new ECDSA P-256 private key, the only key type Slipway uses.
func GenerateKey() (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return key, nil
}

// NewCA creates a self-signed CA certificate for the signer's public key,
// valid from now (less ClockSkew) for the given lifetime.
func NewCA(signer crypto.Signer, commonName string, lifetime time.Duration, now time.Time) (*CA, error) {
	if lifetime <= 0 {
		return nil, fmt.Errorf("create ca: lifetime %s must be positive", lifetime)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	skid, err := subjectKeyID(signer.Public())
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"Slipway"}},
		NotBefore:             now.Add(-ClockSkew),
		NotAfter:              now.Add(lifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SubjectKeyId:          skid,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, signer.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("create ca: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("create ca: parse: %w", err)
	}
	return &CA{Cert: cert, Signer: signer}, nil
}

// IssueServer issues the server certificate of the VM with the given launch id:
// serverAuth only, its DNS name ServerName(launchID), valid for lifetime (the
// pool's maximum VM lifetime).
func (ca *CA) IssueServer(launchID string, pub crypto.PublicKey, lifetime time.Duration, now time.Time) (*x509.Certificate, error) {
	if err := ValidateLaunchID(launchID); err != nil {
		return nil, fmt.Errorf("issue server certificate: %w", err)
	}
	name := ServerName(launchID)
	return ca.issue(pub, lifetime, now, &x509.Certificate{
		Subject:     pkix.Name{CommonName: name},
		DNSNames:    []string{name},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
}

// IssueClient issues a short-lived orchestrator client certificate: clientAuth
// only, subject CN OrchestratorCN.
func (ca *CA) IssueClient(pub crypto.PublicKey, lifetime time.Duration, now time.Time) (*x509.Certificate, error) {
	return ca.issue(pub, lifetime, now, &x509.Certificate{
		Subject:     pkix.Name{CommonName: OrchestratorCN},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

func (ca *CA) issue(pub crypto.PublicKey, lifetime time.Duration, now time.Time, tmpl *x509.Certificate) (*x509.Certificate, error) {
	if lifetime <= 0 {
		return nil, fmt.Errorf("issue %s: lifetime %s must be positive", tmpl.Subject.CommonName, lifetime)
	}
	if ca.Cert == nil || ca.Signer == nil {
		return nil, errors.New("issue certificate: CA has no certificate or signer")
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = now.Add(-ClockSkew)
	tmpl.NotAfter = now.Add(lifetime)
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		// A leaf that outlives its CA would fail verification before its own expiry.
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.BasicConstraintsValid = true
	tmpl.AuthorityKeyId = ca.Cert.SubjectKeyId
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Signer)
	if err != nil {
		return nil, fmt.Errorf("issue %s: %w", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("issue %s: parse: %w", tmpl.Subject.CommonName, err)
	}
	return cert, nil
}

func newSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("certificate serial: %w", err)
	}
	return serial, nil
}

func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("subject key id: %w", err)
	}
	sum := sha256.Sum256(der)
	return sum[:20], nil
}
