package stage_test

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/slipway-ci/slipway/internal/apigw"
	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/internal/pool"
	"github.com/slipway-ci/slipway/internal/secret"
	"github.com/slipway-ci/slipway/internal/stage"
	"github.com/slipway-ci/slipway/internal/stage/record"
)

// A dependency that is down or does not answer is a 503 that names it,
// with Retry-After, and comes within the deadlines, not a 500 or a request
// that hangs: DynamoDB refusing connections, DynamoDB paused (a listener
// that never answers), KMS paused under a create with secrets.
func TestADependencyThatDoesNotAnswerIsA503NamingIt(t *testing.T) {
	refused := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		return "http://" + addr
	}()
	paused := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				t.Cleanup(func() { c.Close() }) // held open, never answered
			}
		}()
		return "http://" + ln.Addr().String()
	}()
	// The deployment's deadlines (awsclient), shortened for the test.
	client := awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) { tr.ResponseHeaderTimeout = 300 * time.Millisecond })
	cfg := aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("k", "s", ""), HTTPClient: client}
	ddb := func(endpoint string) *dynamodb.Client {
		return dynamodb.NewFromConfig(cfg, func(o *dynamodb.Options) { o.BaseEndpoint = aws.String(endpoint) })
	}
	api := func(db *dynamodb.Client, kmsEndpoint string) *stage.API {
		return stage.NewAPI(&stage.Deps{
			Stages: &record.Store{DB: db, Table: "t"}, VMs: &lease.Store{DB: db, Table: "t"}, Pools: []pool.Pool{testPool("p", 0, 1)},
			Sealer: &secret.Sealer{KMS: kms.NewFromConfig(cfg, func(o *kms.Options) { o.BaseEndpoint = aws.String(kmsEndpoint) }), KeyID: "alias/k"},
		})
	}
	for _, c := range []struct {
		name, method, path, body string
		api                      *stage.API
		service                  string
	}{
		{"DynamoDB refusing connections", "GET", "/v1/pools", "", api(ddb(refused), refused), "DynamoDB did not answer (Query)"},
		{"DynamoDB paused", "GET", "/v1/pools", "", api(ddb(paused), paused), "DynamoDB did not answer (Query)"},
		{"KMS paused", "POST", "/v1/stages", `{"id":"s1","pool":"p","secrets":{"T":"v"}}`, api(ddb(refused), paused), "KMS did not answer (GenerateDataKey)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			req := httptest.NewRequest(c.method, c.path, strings.NewReader(c.body))
			req = req.WithContext(apigw.WithCaller(req.Context(), callerA))
			rec := httptest.NewRecorder()
			start := time.Now()
			c.api.ServeHTTP(rec, req)
			var body stage.ErrorBody
			_ = json.NewDecoder(bytes.NewReader(rec.Body.Bytes())).Decode(&body)
			if rec.Code != http.StatusServiceUnavailable || body.Error.Code != stage.CodeUnavailable ||
				!strings.HasPrefix(body.Error.Message, c.service) || rec.Header().Get("Retry-After") == "" {
				t.Errorf("%d %s (Retry-After %q), want a 503 naming %q", rec.Code, rec.Body, rec.Header().Get("Retry-After"), c.service)
			}
			if took := time.Since(start); took > 10*time.Second {
				t.Errorf("answered after %s", took)
			}
		})
	}
}
