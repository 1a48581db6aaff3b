package delegate_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/internal/delegate"
	"github.com/slipway-ci/slipway/internal/stage"
)

// capture answers every request itself: nothing leaves the machine.
type capture struct {
	mu   sync.Mutex
	seen []*http.Request
	body map[*http.Request][]byte
}

func (c *capture) RoundTrip(r *http.Request) (*http.Response, error) {
	var body []byte
	if r.Body != nil {
		body, _ = io.ReadAll(r.Body)
	}
	c.mu.Lock()
	c.seen = append(c.seen, r)
	if c.body == nil {
		c.body = map[*http.Request][]byte{}
	}
	c.body[r] = body
	c.mu.Unlock()
	answer := `{"id":"s1","phase":"released","version":1,"pools":[]}`
	return &http.Response{StatusCode: 200, Body: io.NopCloser(strings.NewReader(answer)), Header: http.Header{}, Request: r}, nil
}

// TestSigV4: every call to an API Gateway endpoint carries the signature
// the SDK's own signer gives the same request with the same credentials and
// time, for execute-api in the URL's region.
func TestSigV4(t *testing.T) {
	creds := credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token")
	at := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	transport := &capture{}
	c, err := delegate.New("https://abc123def4.execute-api.eu-west-1.amazonaws.com/prod", delegate.Options{
		HTTP: &http.Client{Transport: transport}, Credentials: creds, Now: func() time.Time { return at },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	calls := map[string]func() error{
		"create": func() error {
			_, err := c.Create(ctx, &stage.Spec{ID: "s1", Pool: "p", Groups: []stage.Group{{Final: true, Steps: []stage.Step{{ID: "a", Step: agentapi.Step{Script: "true"}}}}}}, 0)
			return err
		},
		"status": func() error { _, err := c.Status(ctx, "s1", 3, 20*time.Second); return err },
		"add group": func() error {
			_, err := c.AddGroup(ctx, "s1", &stage.Group{Steps: []stage.Step{{ID: "b"}}}, 0)
			return err
		},
		"step":        func() error { _, err := c.Step(ctx, "s1", "a", time.Second); return err },
		"logs":        func() error { _, err := c.Logs(ctx, "s1", "a", 7, time.Second); return err },
		"cancel step": func() error { _, err := c.CancelStep(ctx, "s1", "a"); return err },
		"delete":      func() error { _, err := c.Delete(ctx, "s1"); return err },
		"pools":       func() error { _, err := c.Pools(ctx); return err },
	}
	for name, call := range calls {
		if err := call(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if len(transport.seen) != len(calls) {
		t.Fatalf("%d requests for %d calls", len(transport.seen), len(calls))
	}
	got, _ := creds.Retrieve(ctx)
	for _, req := range transport.seen {
		auth := req.Header.Get("Authorization")
		if !strings.HasPrefix(auth, "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261203/eu-west-1/execute-api/aws4_request") ||
			req.Header.Get("X-Amz-Security-Token") != "session-token" || req.Header.Get("X-Amz-Date") != "20261203T120000Z" {
			t.Fatalf("%s %s: headers %v", req.Method, req.URL, req.Header)
		}
		// The same request, signed by the SDK.
		body := transport.body[req]
		want, _ := http.NewRequest(req.Method, req.URL.String(), bytes.NewReader(body))
		for _, h := range []string{"Content-Type", "Accept"} {
			if v := req.Header.Get(h); v != "" {
				want.Header.Set(h, v)
			}
		}
		sum := sha256.Sum256(body)
		if err := v4.NewSigner().SignHTTP(ctx, got, want, hex.EncodeToString(sum[:]), "execute-api", "eu-west-1", at); err != nil {
			t.Fatal(err)
		}
		if auth != want.Header.Get("Authorization") {
			t.Errorf("%s %s:\n got %s\nwant %s", req.Method, req.URL, auth, want.Header.Get("Authorization"))
		}
	}
}

// TestNoUnsignedRequestLeaves: an endpoint that is not loopback is refused
// without credentials or a region, and loopback gets plain HTTP.
func TestNoUnsignedRequestLeaves(t *testing.T) {
	if _, err := delegate.New("https://abc.execute-api.us-east-1.amazonaws.com", delegate.Options{}); err == nil ||
		!strings.Contains(err.Error(), "credentials") {
		t.Errorf("no credentials: %v", err)
	}
	creds := credentials.NewStaticCredentialsProvider("AKID", "secret", "")
	if _, err := delegate.New("https://stages.example.com", delegate.Options{Credentials: creds}); err == nil || !strings.Contains(err.Error(), "region") {
		t.Errorf("a custom domain without a region: %v", err)
	}
	transport := &capture{}
	c, err := delegate.New("https://stages.example.com", delegate.Options{HTTP: &http.Client{Transport: transport}, Credentials: creds, Region: "us-west-2"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Pools(context.Background()); err != nil {
		t.Fatal(err)
	}
	if auth := transport.seen[0].Header.Get("Authorization"); !strings.Contains(auth, "/us-west-2/execute-api/") {
		t.Errorf("custom domain: %q", auth)
	}
	for _, local := range []string{"http://127.0.0.1:8079", "http://localhost:8079", "http://[::1]:8079"} {
		transport := &capture{}
		c, err := delegate.New(local, delegate.Options{HTTP: &http.Client{Transport: transport}, Credentials: aws.AnonymousCredentials{}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Pools(context.Background()); err != nil {
			t.Fatal(err)
		}
		if auth := transport.seen[0].Header.Get("Authorization"); auth != "" {
			t.Errorf("%s: a loopback request was signed: %q", local, auth)
		}
	}
}
