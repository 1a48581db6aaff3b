package apigw_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"slices"
	"testing"

	"github.com/aws/aws-lambda-go/events"

	"github.com/slipway-ci/slipway/internal/apigw"
)

func TestProxyEventRoundTrip(t *testing.T) {
	data, err := os.ReadFile("testdata/rest-proxy-post.json")
	if err != nil {
		t.Fatal(err)
	}
	var ev events.APIGatewayProxyRequest
	if err := json.Unmarshal(data, &ev); err != nil {
		t.Fatal(err)
	}
	var seen *http.Request
	var seenBody []byte
	h := apigw.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = r
		seenBody, _ = io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	resp, err := h(context.Background(), ev)
	if err != nil {
		t.Fatal(err)
	}
	if seen.Method != http.MethodPost || seen.URL.Path != "/v1/stages/build-7/groups" || seen.RemoteAddr != "10.0.3.17" {
		t.Fatalf("request %s %s from %s", seen.Method, seen.URL.Path, seen.RemoteAddr)
	}
	// The caller IAM authenticated, as the event names it.
	if got := apigw.Caller(seen.Context()); got != "arn:aws:sts::111122223333:assumed-role/harness-delegate/i-0123456789abcdef0" {
		t.Errorf("caller %q", got)
	}
	if q := seen.URL.Query(); q.Get("wait") != "5s" || !slices.Equal(q["tag"], []string{"a", "b"}) {
		t.Fatalf("query %v", q)
	}
	if string(seenBody) != `{"steps":[{"id":"test","command":["make","test"]}],"final":true}` {
		t.Fatalf("body %q", seenBody)
	}
	if seen.Header.Get("Content-Type") != "application/json" || seen.Host != "abc123def4.execute-api.eu-west-1.amazonaws.com" {
		t.Fatalf("headers %v host %s", seen.Header, seen.Host)
	}
	if resp.StatusCode != http.StatusCreated || resp.Body != `{"ok":true}` || resp.IsBase64Encoded || resp.MultiValueHeaders["Content-Type"][0] != "application/json" {
		t.Fatalf("response %+v", resp)
	}
}

func TestBinaryResponsesAreBase64(t *testing.T) {
	h := http.Header{"Content-Type": {"application/octet-stream"}}
	resp := apigw.Response(200, h, []byte{0xff, 0, 1})
	if !resp.IsBase64Encoded || resp.Body != base64.StdEncoding.EncodeToString([]byte{0xff, 0, 1}) {
		t.Fatalf("response %+v", resp)
	}
	// JSON that is not UTF-8 (it never is, but a handler may be wrong) too.
	if resp := apigw.Response(200, http.Header{"Content-Type": {"application/json"}}, []byte{0xff}); !resp.IsBase64Encoded {
		t.Fatal("invalid UTF-8 passed as text")
	}
}

func TestBadBase64Body(t *testing.T) {
	ev := events.APIGatewayProxyRequest{HTTPMethod: "POST", Path: "/v1/stages", Body: "not base64!", IsBase64Encoded: true}
	if _, err := apigw.Request(context.Background(), ev); err == nil {
		t.Fatal("a body that is not base64 was accepted")
	}
}
