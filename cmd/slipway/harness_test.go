package main

import (
	"context"
	"crypto/tls"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/agent/agenttest"
	"github.com/slipway-ci/slipway/internal/pki"
)

// Off loopback the runner starts only with TLS and a token (or client
// certificates), and then answers nobody without the token.
func TestHarnessRunnerOffLoopback(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.InitDir(dir, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.IssueServerFiles(dir, "runner", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	token := filepath.Join(dir, "token")
	short := filepath.Join(dir, "short")
	_ = os.WriteFile(token, []byte("e3b0c44298fc1c149afbf4c8996fb924\n"), 0o600)
	_ = os.WriteFile(short, []byte("1234"), 0o600)
	tlsFlags := []string{"--tls-cert", pair.CertPath, "--tls-key", pair.KeyPath}
	ctx := context.Background()
	for _, tt := range []struct {
		name  string
		flags []string
		want  string
	}{
		{"plain HTTP", nil, "is not a loopback address"},
		{"TLS without a token", tlsFlags, "is not a loopback address"},
		{"a token without TLS", []string{"--token-file", token}, "is not a loopback address"},
		{"a short token", append([]string{"--token-file", short}, tlsFlags...), "at least 16 wanted"},
		{"a key without its certificate", []string{"--tls-key", pair.KeyPath, "--token-file", token}, "go together"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"harness-runner", "--listen", "0.0.0.0:3999", "--endpoint", "http://127.0.0.1:1"}, tt.flags...)
			if err := run(ctx, args, &agenttest.Buffer{}); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want %q", err, tt.want)
			}
		})
	}

	port := agenttest.FreePort(t)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	out := &agenttest.Buffer{}
	go func() {
		done <- run(runCtx, append([]string{"harness-runner", "--listen", "0.0.0.0:" + port, "--endpoint", "http://127.0.0.1:1", "--token-file", token}, tlsFlags...), out)
	}()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("harness-runner: %v", err)
		}
	})
	// The delegate's client takes any certificate (Http.getUnsafeOkHttpClient).
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // as the delegate does
	base := "https://127.0.0.1:" + port
	var resp *http.Response
	for range 100 {
		if resp, err = client.Get(base + "/healthz"); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v %v\n%s", resp, err, out)
	}
	resp.Body.Close()
	post := func(auth string) int {
		req, _ := http.NewRequest(http.MethodPost, base+"/setup", strings.NewReader(`{"id":"x","pool_id":"p"}`))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(""); code != http.StatusUnauthorized {
		t.Errorf("without the token: %d", code)
	}
	// With it the call reaches the runner, which finds no Slipway there.
	if code := post("Bearer e3b0c44298fc1c149afbf4c8996fb924"); code == http.StatusUnauthorized || code == 0 {
		t.Errorf("with the token: %d", code)
	}
}
