package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/slipway-ci/slipway/internal/pki"
)

// CertFiles serves the agent's TLS configuration from certificate files and
// reloads them when they change, so a renewed certificate takes effect
// without a restart. A file that fails to load (half written, say) keeps the
// last good configuration in use.
type CertFiles struct {
	CertPath, KeyPath, ClientCAPath string
	// Logger reports reloads; nil discards.
	Logger *slog.Logger

	mu     sync.Mutex
	stamps [3]fileStamp
	config *tls.Config
}

type fileStamp struct {
	modTime time.Time
	size    int64
}

// TLSConfig returns the server configuration: TLS 1.3 only, a client
// certificate required and verified against the client CA, and accepted only
// with the clientAuth usage and the orchestrator's subject.
func (c *CertFiles) TLSConfig() (*tls.Config, error) {
	if _, err := c.current(); err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return c.current()
		},
	}, nil
}

func (c *CertFiles) current() (*tls.Config, error) {
	stamps, statErr := c.stat()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.config != nil && (statErr != nil || stamps == c.stamps) {
		return c.config, nil
	}
	cfg, err := c.load()
	if err != nil {
		if c.config != nil {
			c.logger().Warn("reload certificates failed; keeping the previous ones", "err", err)
			return c.config, nil
		}
		return nil, err
	}
	if c.config != nil {
		c.logger().Info("reloaded certificates")
	}
	c.config, c.stamps = cfg, stamps
	return cfg, nil
}

func (c *CertFiles) logger() *slog.Logger {
	if c.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Logger
}

func (c *CertFiles) stat() ([3]fileStamp, error) {
	var stamps [3]fileStamp
	for i, p := range []string{c.CertPath, c.KeyPath, c.ClientCAPath} {
		info, err := os.Stat(p)
		if err != nil {
			return stamps, err
		}
		stamps[i] = fileStamp{modTime: info.ModTime(), size: info.Size()}
	}
	return stamps, nil
}

func (c *CertFiles) load() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(c.CertPath, c.KeyPath)
	if err != nil {
		return nil, fmt.Errorf("load server certificate: %w", err)
	}
	caPEM, err := os.ReadFile(c.ClientCAPath)
	if err != nil {
		return nil, fmt.Errorf("load client CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("load client CA: no certificate in %s", c.ClientCAPath)
	}
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		Certificates:     []tls.Certificate{cert},
		ClientAuth:       tls.RequireAndVerifyClientCert,
		ClientCAs:        pool,
		VerifyConnection: VerifyOrchestrator,
		NextProtos:       []string{"h2", "http/1.1"},
	}, nil
}

// VerifyOrchestrator refuses a client whose verified certificate is not an
// orchestrator's: it must carry the clientAuth usage and the subject CN
// pki.OrchestratorCN. The chain itself was verified against the client CA
// before this runs, with the clientAuth usage required.
func VerifyOrchestrator(cs tls.ConnectionState) error {
	if len(cs.VerifiedChains) == 0 || len(cs.PeerCertificates) == 0 {
		return errors.New("client certificate required")
	}
	leaf := cs.PeerCertificates[0]
	if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return errors.New("client certificate lacks the clientAuth usage")
	}
	if leaf.Subject.CommonName != pki.OrchestratorCN {
		return fmt.Errorf("client certificate subject %q is not the orchestrator", leaf.Subject.CommonName)
	}
	return nil
}
