package pki

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// File names inside a PKI folder written by `slipway pki`.
const (
	CACertFile     = "ca.crt"
	CAKeyFile      = "ca.key"
	ClientCertFile = "client.crt"
	ClientKeyFile  = "client.key"
)

// CertPEM encodes a certificate as PEM.
func CertPEM(cert *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
}

// KeyPEM encodes a private key as PKCS #8 PEM.
func KeyPEM(key crypto.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseCertPEM decodes the first certificate in PEM data.
func ParseCertPEM(data []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return x509.ParseCertificate(block.Bytes)
}

// ParseKeyPEM decodes a PKCS #8 or SEC 1 private key that can sign.
func ParseKeyPEM(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q is not a private key", block.Type)
	}
	if err != nil {
		return nil, err
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key of type %T cannot sign", key)
	}
	return signer, nil
}

// WriteCert writes a certificate as PEM, readable by all.
func WriteCert(path string, cert *x509.Certificate) error {
	if err := os.WriteFile(path, CertPEM(cert), 0o644); err != nil {
		return fmt.Errorf("write certificate: %w", err)
	}
	return nil
}

// WriteKey writes a private key as PEM, readable by its owner only.
func WriteKey(path string, key crypto.PrivateKey) error {
	data, err := KeyPEM(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("write key: %w", err)
	}
	// WriteFile keeps the mode of a file that already exists.
	if err := os.Chmod(path, 0o600); err != nil {
		return fmt.Errorf("write key: %w", err)
	}
	return nil
}

// ReadCert reads a PEM certificate file.
func ReadCert(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read certificate: %w", err)
	}
	cert, err := ParseCertPEM(data)
	if err != nil {
		return nil, fmt.Errorf("read certificate %s: %w", path, err)
	}
	return cert, nil
}

// ReadKey reads a PEM private key file.
func ReadKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	key, err := ParseKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("read key %s: %w", path, err)
	}
	return key, nil
}

// LoadCA reads the CA certificate and its file-backed key from a PKI folder.
func LoadCA(dir string) (*CA, error) {
	cert, err := ReadCert(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, err
	}
	key, err := ReadKey(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Signer: key}, nil
}

// InitDir creates a new CA in dir (ca.crt, ca.key). It refuses to overwrite an
// existing CA, since every certificate it issued would stop verifying.
func InitDir(dir string, lifetime time.Duration, now time.Time) (*CA, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("init pki: %w", err)
	}
	keyPath := filepath.Join(dir, CAKeyFile)
	if _, err := os.Stat(keyPath); err == nil {
		return nil, fmt.Errorf("init pki: %s already exists; remove it to start a new CA", keyPath)
	}
	key, err := GenerateKey()
	if err != nil {
		return nil, err
	}
	ca, err := NewCA(key, "Slipway local CA", lifetime, now)
	if err != nil {
		return nil, err
	}
	if err := WriteKey(keyPath, key); err != nil {
		return nil, err
	}
	if err := WriteCert(filepath.Join(dir, CACertFile), ca.Cert); err != nil {
		return nil, err
	}
	return ca, nil
}

// Pair is a certificate with its private key, as written to disk.
type Pair struct {
	CertPath, KeyPath string
}

// IssueServerFiles issues a server certificate for launchID and writes
// <launchID>.crt and <launchID>.key into dir.
func (ca *CA) IssueServerFiles(dir, launchID string, lifetime time.Duration, now time.Time) (Pair, error) {
	key, err := GenerateKey()
	if err != nil {
		return Pair{}, err
	}
	cert, err := ca.IssueServer(launchID, key.Public(), lifetime, now)
	if err != nil {
		return Pair{}, err
	}
	return writePair(dir, launchID, cert, key)
}

// IssueClientFiles issues an orchestrator client certificate and writes
// client.crt and client.key into dir.
func (ca *CA) IssueClientFiles(dir string, lifetime time.Duration, now time.Time) (Pair, error) {
	key, err := GenerateKey()
	if err != nil {
		return Pair{}, err
	}
	cert, err := ca.IssueClient(key.Public(), lifetime, now)
	if err != nil {
		return Pair{}, err
	}
	return writePair(dir, "client", cert, key)
}

func writePair(dir, name string, cert *x509.Certificate, key crypto.PrivateKey) (Pair, error) {
	p := Pair{CertPath: filepath.Join(dir, name+".crt"), KeyPath: filepath.Join(dir, name+".key")}
	if err := WriteKey(p.KeyPath, key); err != nil {
		return Pair{}, err
	}
	if err := WriteCert(p.CertPath, cert); err != nil {
		return Pair{}, err
	}
	return p, nil
}
