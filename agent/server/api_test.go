package server_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/agent/agenttest"
	"github.com/slipway-ci/slipway/agent/mask"
	"github.com/slipway-ci/slipway/agent/server"
	"github.com/slipway-ci/slipway/internal/pki"
)

func TestBadRequestsGetClearErrors(t *testing.T) {
	a := boundAgent(t, agentapi.Stage{}, server.Config{})
	hc := a.HTTPClient(t)
	base := "https://" + a.Addr
	tests := []struct {
		name, method, path, stage, body string
		wantStatus                      int
		wantCode, wantMsg               string
	}{
		{name: "unknown field", method: "PUT", path: "/v1/steps/s1", stage: stageID, body: `{"command":["true"],"bogus":1}`, wantStatus: 400, wantCode: agentapi.CodeInvalid, wantMsg: "bogus"},
		{name: "empty command", method: "PUT", path: "/v1/steps/s1", stage: stageID, body: `{"command":[]}`, wantStatus: 400, wantCode: agentapi.CodeInvalid, wantMsg: "empty step"},
		{name: "negative timeout", method: "PUT", path: "/v1/steps/s1", stage: stageID, body: `{"script":"x","timeout_seconds":-3}`, wantStatus: 400, wantCode: agentapi.CodeInvalid, wantMsg: "timeout_seconds"},
		{name: "id with dots", method: "PUT", path: "/v1/steps/..", stage: stageID, body: `{"script":"x"}`, wantStatus: 404, wantCode: agentapi.CodeNotFound},
		{name: "id with encoded slash", method: "PUT", path: "/v1/steps/a%2Fb", stage: stageID, body: `{"script":"x"}`, wantStatus: 400, wantCode: agentapi.CodeInvalid, wantMsg: "step id"},
		{name: "id with a dot", method: "GET", path: "/v1/steps/a.b", stage: stageID, wantStatus: 400, wantCode: agentapi.CodeInvalid, wantMsg: "step id"},
		{name: "id too long", method: "GET", path: "/v1/steps/" + strings.Repeat("x", 65), stage: stageID, wantStatus: 400, wantCode: agentapi.CodeInvalid},
		{name: "body too large", method: "PUT", path: "/v1/steps/s1", stage: stageID, body: `{"script":"` + strings.Repeat("x", agentapi.MaxBodyBytes) + `"}`, wantStatus: 413, wantCode: agentapi.CodeTooLarge},
		{name: "missing stage header", method: "GET", path: "/v1/steps/s1", wantStatus: 400, wantCode: agentapi.CodeMissingStage},
		{name: "wrong stage header", method: "GET", path: "/v1/steps/s1", stage: "other", wantStatus: 409, wantCode: agentapi.CodeStageMismatch},
		{name: "unknown step", method: "GET", path: "/v1/steps/nope", stage: stageID, wantStatus: 404, wantCode: agentapi.CodeNotFound, wantMsg: `"nope"`},
		{name: "bad wait", method: "GET", path: "/v1/steps/nope?wait=forever", stage: stageID, wantStatus: 404, wantCode: agentapi.CodeNotFound},
		{name: "unknown endpoint", method: "GET", path: "/v2/anything", wantStatus: 404, wantCode: agentapi.CodeNotFound},
		{name: "bad stage spec", method: "PUT", path: "/v1/stage", body: `{"id":"a/b"}`, wantStatus: 400, wantCode: agentapi.CodeInvalid, wantMsg: "stage id"},
		{name: "destroy another stage", method: "DELETE", path: "/v1/stage", stage: "other", wantStatus: 409, wantCode: agentapi.CodeStageMismatch},
		{name: "wrong method", method: "POST", path: "/v1/steps/s1", stage: stageID, wantStatus: 405, wantCode: agentapi.CodeMethodNotAllowed, wantMsg: "allowed: GET, HEAD, PUT"},
		{name: "wrong method on health", method: "DELETE", path: "/v1/health", wantStatus: 405, wantCode: agentapi.CodeMethodNotAllowed, wantMsg: "GET"},
		{name: "a container step without an engine says how to get one", method: "PUT", path: "/v1/steps/s1", stage: stageID, body: `{"image":"busybox"}`, wantStatus: 400, wantCode: agentapi.CodeInvalid, wantMsg: "start dockerd and run slipway local with DOCKER_HOST set"},
		{name: "two stage headers", method: "GET", path: "/v1/steps/s1", stage: stageID + "," + stageID, wantStatus: 400, wantCode: agentapi.CodeInvalid, wantMsg: "more than once"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, base+tt.path, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			for _, st := range strings.Split(tt.stage, ",") {
				if st != "" {
					req.Header.Add(agentapi.StageHeader, st)
				}
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode == 405 && resp.Header.Get("Allow") == "" {
				t.Errorf("405 without Allow")
			}
			var body agentapi.ErrorBody
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatalf("status %d, body not an error document: %v", resp.StatusCode, err)
			}
			if resp.StatusCode != tt.wantStatus || body.Error.Code != tt.wantCode || !strings.Contains(body.Error.Message, tt.wantMsg) {
				t.Fatalf("got %d %+v, want %d %s mentioning %q", resp.StatusCode, body.Error, tt.wantStatus, tt.wantCode, tt.wantMsg)
			}
		})
	}
}

func TestBadLogAndWaitQueries(t *testing.T) {
	a := boundAgent(t, agentapi.Stage{}, server.Config{})
	run(t, a, "s", agentapi.Step{Script: "echo 12345"})
	hc := a.HTTPClient(t)
	for _, q := range []string{"/logs?offset=-1", "/logs?offset=x", "/logs?limit=0", "/logs?limit=999999999", "/logs?offset=7", "?wait=-1s", "?wait=2h", "?wait=soon"} {
		req, _ := http.NewRequest("GET", "https://"+a.Addr+"/v1/steps/s"+q, nil)
		req.Header.Set(agentapi.StageHeader, stageID)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || !bytes.Contains(body, []byte(agentapi.CodeInvalid)) {
			t.Errorf("%s: %d %s, want 400 invalid", q, resp.StatusCode, body)
		}
	}
}

// certWith signs a client certificate with the given CA, subject and usage.
func certWith(t *testing.T, ca *pki.CA, cn string, usage []x509.ExtKeyUsage, notBefore, notAfter time.Time) tls.Certificate {
	t.Helper()
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: notBefore, NotAfter: notAfter, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: usage,
	}
	der, err := x509.CreateCertificate(nil, tmpl, ca.Cert, key.Public(), ca.Signer)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestOnlyTheOrchestratorGetsIn(t *testing.T) {
	a := agenttest.Start(t, server.Config{})
	other := agenttest.NewPKI(t) // another deployment's CA
	now := time.Now()
	serverCert, err := tls.LoadX509KeyPair(a.CertPath, a.KeyPath)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		certs []tls.Certificate
		ok    bool
	}{
		{name: "orchestrator", certs: []tls.Certificate{a.ClientCert}, ok: true},
		{name: "no client certificate"},
		{name: "another CA", certs: []tls.Certificate{other.ClientCert}},
		{name: "expired", certs: []tls.Certificate{certWith(t, a.CA, pki.OrchestratorCN, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, now.Add(-2*time.Hour), now.Add(-time.Hour))}},
		{name: "a VM's server certificate", certs: []tls.Certificate{serverCert}},
		{name: "no clientAuth usage", certs: []tls.Certificate{certWith(t, a.CA, pki.OrchestratorCN, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, now.Add(-time.Hour), now.Add(time.Hour))}},
		{name: "another subject", certs: []tls.Certificate{certWith(t, a.CA, "someone-else", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, now.Add(-time.Hour), now.Add(time.Hour))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := &http.Transport{TLSClientConfig: a.TLSConfig(tt.certs...)}
			defer tr.CloseIdleConnections()
			resp, err := (&http.Client{Transport: tr}).Get("https://" + a.Addr + "/v1/health")
			if tt.ok {
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != 200 {
					t.Fatalf("status %d", resp.StatusCode)
				}
				return
			}
			if err == nil {
				resp.Body.Close()
				t.Fatalf("let in with status %d", resp.StatusCode)
			}
		})
	}
}

func TestTLS12IsRefused(t *testing.T) {
	a := agenttest.Start(t, server.Config{})
	cfg := a.TLSConfig(a.ClientCert)
	cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	conn, err := tls.Dial("tcp", a.Addr, cfg)
	if err == nil {
		conn.Close()
		t.Fatal("TLS 1.2 handshake succeeded")
	}
}

func TestCertificatesReloadWhenTheirFilesChange(t *testing.T) {
	a := agenttest.Start(t, server.Config{})
	serial := func() *big.Int {
		t.Helper()
		conn, err := tls.Dial("tcp", a.Addr, a.TLSConfig(a.ClientCert))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber
	}
	before := serial()
	// Renew the server certificate in place, as a VM's renewal would.
	time.Sleep(10 * time.Millisecond) // a new modification time
	renewed, err := a.CA.IssueServerFiles(t.TempDir(), agenttest.LaunchID, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range [][2]string{{renewed.KeyPath, a.KeyPath}, {renewed.CertPath, a.CertPath}} {
		data, err := os.ReadFile(f[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f[1], data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if after := serial(); after.Cmp(before) == 0 {
		t.Fatal("the agent still serves the old certificate")
	}
	// A broken file keeps the last good certificate in use.
	if err := os.WriteFile(a.CertPath, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = serial()
}

// A refusal names what was wrong without echoing a secret, the request's
// own or the stage's, or kilobytes of a value.
func TestRefusalsDoNotEchoSecrets(t *testing.T) {
	a := boundAgent(t, agentapi.Stage{Secrets: map[string]string{"STAGE": "stage-secret-value"}}, server.Config{})
	hc := a.HTTPClient(t)
	for name, body := range map[string]string{
		"work_dir with a step secret": `{"script":"x","secrets":{"S":"step-secret-value"},"work_dir":"../step-secret-value"}`,
		"user with the stage secret":  `{"script":"x","user":"stage-secret-value"}`,
		"output name, shell":          `{"script":"x","secrets":{"S":"step-secret-value"},"outputs":["step-secret-value"],"shell":"step-secret-value"}`,
		"a long path":                 `{"script":"x","work_dir":"/` + strings.Repeat("p", 5000) + `"}`,
	} {
		req, _ := http.NewRequest("PUT", "https://"+a.Addr+"/v1/steps/s1", strings.NewReader(body))
		req.Header.Set(agentapi.StageHeader, stageID)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		msg := string(data)
		if resp.StatusCode != 400 || strings.Contains(msg, "secret-value") || !strings.Contains(msg, mask.Replacement) && !strings.Contains(name, "long") || len(msg) > 600 {
			t.Errorf("%s: %d %s", name, resp.StatusCode, msg)
		}
	}
}

// Over HTTP/2 a half body ends only its own stream: the 400 comes after the
// body timeout, and the connection, which carries a group's other calls,
// stays up for the next call.
func TestSlowBodyOverHTTP2EndsOnlyItsStream(t *testing.T) {
	a := boundAgent(t, agentapi.Stage{}, server.Config{BodyTimeout: 300 * time.Millisecond})
	var http2Only http.Protocols
	http2Only.SetHTTP2(true)
	var dials atomic.Int64
	tr := &http.Transport{Protocols: &http2Only, TLSClientConfig: a.TLSConfig(a.ClientCert), DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}

	body, stall := io.Pipe()
	t.Cleanup(func() { _ = stall.Close() })
	go func() { _, _ = stall.Write([]byte(`{"script":`)) }()
	req, err := http.NewRequest(http.MethodPut, "https://"+a.Addr+"/v1/steps/slow", body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(agentapi.StageHeader, stageID)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("no answer to half a body: %v", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != 400 || resp.ProtoMajor != 2 {
		t.Errorf("half a body: %d over %s, want 400 over HTTP/2", resp.StatusCode, resp.Proto)
	}
	resp, err = hc.Get("https://" + a.Addr + "/v1/health")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != 200 || dials.Load() != 1 {
		t.Errorf("next call: %d after %d dials, want 200 on the same connection", resp.StatusCode, dials.Load())
	}
}

// A client that sends half a body is answered and let go after the body
// timeout, not held; the server cuts off half a header and idle
// connections too, and sets no deadline that would end a long-poll.
func TestSlowClientsAreLetGo(t *testing.T) {
	a := boundAgent(t, agentapi.Stage{}, server.Config{BodyTimeout: 300 * time.Millisecond})
	conn, err := tls.Dial("tcp", a.Addr, a.HTTPClient(t).Transport.(*http.Transport).TLSClientConfig)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "PUT /v1/steps/slow HTTP/1.1\r\nHost: agent\r\n%s: %s\r\nContent-Length: 100\r\n\r\n{\"script\":", agentapi.StageHeader, stageID)
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to half a body: %v", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Errorf("half a body: %d", resp.StatusCode)
	}
	hs := server.HTTPServer(nil, nil, nil)
	if hs.ReadHeaderTimeout <= 0 || hs.IdleTimeout <= 0 || hs.ReadTimeout != 0 || hs.WriteTimeout != 0 {
		t.Errorf("header %v, idle %v, read %v, write %v: want the first two set, no overall deadline", hs.ReadHeaderTimeout, hs.IdleTimeout, hs.ReadTimeout, hs.WriteTimeout)
	}
}
