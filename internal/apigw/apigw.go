// Package apigw serves an http.Handler behind API Gateway's REST API proxy
// integration: each proxy event becomes an *http.Request, and what the
// handler writes becomes the proxy response. (aws-lambda-go-api-proxy does
// this too, but its module requires eight web frameworks' modules.)
package apigw

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"unicode/utf8"

	"github.com/aws/aws-lambda-go/events"
)

// Handler returns the Lambda handler that serves h.
func Handler(h http.Handler) func(context.Context, events.APIGatewayProxyRequest) (events.APIGatewayProxyResponse, error) {
	return func(ctx context.Context, ev events.APIGatewayProxyRequest) (events.APIGatewayProxyResponse, error) {
		req, err := Request(ctx, ev)
		if err != nil {
			return events.APIGatewayProxyResponse{}, err
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return Response(rec.Result().StatusCode, rec.Header(), rec.Body.Bytes()), nil
	}
}

// Request is the proxy event as an HTTP request.
func Request(ctx context.Context, ev events.APIGatewayProxyRequest) (*http.Request, error) {
	body := []byte(ev.Body)
	if ev.IsBase64Encoded {
		var err error
		if body, err = base64.StdEncoding.DecodeString(ev.Body); err != nil {
			return nil, fmt.Errorf("proxy event: body is not base64: %w", err)
		}
	}
	query := url.Values{}
	for k, vs := range ev.MultiValueQueryStringParameters {
		query[k] = append(query[k], vs...)
	}
	for k, v := range ev.QueryStringParameters {
		if _, ok := query[k]; !ok {
			query.Set(k, v)
		}
	}
	u := &url.URL{Path: ev.Path, RawQuery: query.Encode()}
	if arn := ev.RequestContext.Identity.UserArn; arn != "" {
		ctx = WithCaller(ctx, arn)
	}
	req, err := http.NewRequestWithContext(ctx, ev.HTTPMethod, u.String(), bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("proxy event: %w", err)
	}
	for k, vs := range ev.MultiValueHeaders {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	for k, v := range ev.Headers {
		if req.Header.Get(k) == "" {
			req.Header.Set(k, v)
		}
	}
	req.Host = req.Header.Get("Host")
	req.RemoteAddr = ev.RequestContext.Identity.SourceIP
	req.RequestURI = u.RequestURI()
	return req, nil
}

// Response is what the handler wrote, as a proxy response: text as it is,
// anything else base64-encoded.
func Response(status int, header http.Header, body []byte) events.APIGatewayProxyResponse {
	resp := events.APIGatewayProxyResponse{StatusCode: status, MultiValueHeaders: map[string][]string{}}
	for k, vs := range header {
		resp.MultiValueHeaders[k] = vs
	}
	ct := header.Get("Content-Type")
	textual := strings.HasPrefix(ct, "text/") || strings.Contains(ct, "json") || strings.Contains(ct, "yaml")
	if textual && utf8.Valid(body) {
		resp.Body = string(body)
	} else {
		resp.Body = base64.StdEncoding.EncodeToString(body)
		resp.IsBase64Encoded = true
	}
	return resp
}

type callerKey struct{}

// WithCaller is ctx carrying the caller API Gateway authenticated: the IAM
// ARN of requestContext.identity.userArn. Only what stands in for API
// Gateway sets it (Request, and `slipway local`'s server).
func WithCaller(ctx context.Context, arn string) context.Context {
	return context.WithValue(ctx, callerKey{}, arn)
}

// Caller is the authenticated caller's ARN, empty when none was.
func Caller(ctx context.Context) string {
	arn, _ := ctx.Value(callerKey{}).(string)
	return arn
}
