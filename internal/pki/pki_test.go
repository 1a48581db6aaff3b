package pki

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func newTestCA(t *testing.T) *CA {
	t.Helper()
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	ca, err := NewCA(key, "test CA", 24*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func TestIssuedCertificatesVerifyForTheirUsageOnly(t *testing.T) {
	ca := newTestCA(t)
	now := time.Now()
	key, _ := GenerateKey()
	server, err := ca.IssueServer("lt-0123abc", key.Public(), time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	client, err := ca.IssueClient(key.Public(), 10*time.Minute, now)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)

	tests := []struct {
		name    string
		cert    *x509.Certificate
		dnsName string
		usage   x509.ExtKeyUsage
		wantErr bool
	}{
		{name: "server as server", cert: server, dnsName: "lt-0123abc.vm.slipway.internal", usage: x509.ExtKeyUsageServerAuth},
		{name: "server for another vm", cert: server, dnsName: "lt-other.vm.slipway.internal", usage: x509.ExtKeyUsageServerAuth, wantErr: true},
		{name: "server as client", cert: server, usage: x509.ExtKeyUsageClientAuth, wantErr: true},
		{name: "client as client", cert: client, usage: x509.ExtKeyUsageClientAuth},
		{name: "client as server", cert: client, usage: x509.ExtKeyUsageServerAuth, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.cert.Verify(x509.VerifyOptions{
				Roots: roots, DNSName: tt.dnsName, KeyUsages: []x509.ExtKeyUsage{tt.usage}, CurrentTime: now,
			})
			if (err != nil) != tt.wantErr {
				t.Fatalf("verify: err = %v, want error %v", err, tt.wantErr)
			}
		})
	}
	if client.Subject.CommonName != OrchestratorCN {
		t.Errorf("client CN = %q, want %q", client.Subject.CommonName, OrchestratorCN)
	}
	if got := now.Sub(server.NotBefore); got < ClockSkew-time.Second {
		t.Errorf("NotBefore only %s back, want about %s for clock skew", got, ClockSkew)
	}
	if got := server.NotAfter.Sub(now); got > time.Hour || got < time.Hour-time.Minute {
		t.Errorf("server lifetime %s, want 1h", got)
	}
}

func TestIssueRejectsBadInput(t *testing.T) {
	ca := newTestCA(t)
	key, _ := GenerateKey()
	tests := []struct {
		name     string
		launchID string
		lifetime time.Duration
		want     string
	}{
		{name: "path in launch id", launchID: "../etc", lifetime: time.Hour, want: "launch id"},
		{name: "dot in launch id", launchID: "a.b", lifetime: time.Hour, want: "launch id"},
		{name: "empty launch id", launchID: "", lifetime: time.Hour, want: "launch id"},
		{name: "zero lifetime", launchID: "ok", lifetime: 0, want: "lifetime"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ca.IssueServer(tt.launchID, key.Public(), tt.lifetime, time.Now())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}

func TestLeafNeverOutlivesCA(t *testing.T) {
	ca := newTestCA(t)
	key, _ := GenerateKey()
	cert, err := ca.IssueServer("vm1", key.Public(), 365*24*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if cert.NotAfter.After(ca.Cert.NotAfter) {
		t.Fatalf("leaf NotAfter %s after CA NotAfter %s", cert.NotAfter, ca.Cert.NotAfter)
	}
}

func TestDirRoundTrip(t *testing.T) {
	dir := t.TempDir()
	ca, err := InitDir(dir, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := InitDir(dir, time.Hour, time.Now()); err == nil {
		t.Fatal("second InitDir overwrote the CA")
	}
	loaded, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.Cert.Equal(ca.Cert) {
		t.Fatal("loaded CA certificate differs")
	}
	pair, err := loaded.IssueServerFiles(dir, "vm-7", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(pair.KeyPath)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v, want 0600", info.Mode().Perm())
	}
	cert, err := ReadCert(pair.CertPath)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cert.DNSNames, []string{"vm-7.vm.slipway.internal"}) {
		t.Errorf("DNS names %v", cert.DNSNames)
	}
	if _, err := ReadKey(filepath.Join(dir, CAKeyFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadKey(pair.CertPath); err == nil {
		t.Fatal("a certificate file read as a key")
	}
}

func TestIdentityRenews(t *testing.T) {
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	ca, err := NewCA(key, "test CA", 24*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// By default a certificate lives about an hour: one that leaks with a
	// function's environment opens the agents for no longer.
	id := &Identity{CA: ca}
	first, err := id.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	if life := time.Until(first.Leaf.NotAfter); life > time.Hour+5*time.Minute || life < 50*time.Minute {
		t.Errorf("a default certificate lives %v, want about an hour", life)
	}
	if first.Leaf.Subject.CommonName != OrchestratorCN || first.Leaf.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Fatalf("certificate %+v", first.Leaf.Subject)
	}
	if again, _ := id.Certificate(); again != first {
		t.Fatal("a fresh certificate was issued again")
	}
	// With an 8 h lifetime, a certificate with under 2 h left is renewed.
	id.Lifetime = 8 * time.Hour
	renewed, err := id.Certificate()
	if err != nil || renewed == first || renewed.PrivateKey != first.PrivateKey {
		t.Fatalf("renewal: %v (same key kept: %v)", err, renewed.PrivateKey == first.PrivateKey)
	}
}
