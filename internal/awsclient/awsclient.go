// Package awsclient is the HTTP client every AWS client of Slipway uses, on
// AWS and on the local stand-ins alike: a service that does not answer
// fails the call within seconds, instead of holding a request (and its
// Lambda) until some outer timeout, so the caller can say which service it
// was (a 503 naming it) and try again.
package awsclient

import (
	"net"
	"net/http"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
)

// Deadlines of each attempt of a call (the SDK retries twice more). The
// response's headers bound the wait for the service, not the time to send
// or read a body: a large log upload or download is not cut short.
const (
	ConnectTimeout  = 3 * time.Second
	ResponseTimeout = 10 * time.Second
)

// HTTPClient is a client with those deadlines.
func HTTPClient() aws.HTTPClient {
	return awshttp.NewBuildableClient().
		WithDialerOptions(func(d *net.Dialer) { d.Timeout = ConnectTimeout }).
		WithTransportOptions(func(t *http.Transport) {
			t.TLSHandshakeTimeout = ConnectTimeout
			t.ResponseHeaderTimeout = ResponseTimeout
		})
}
