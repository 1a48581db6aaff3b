package awsclient_test

import (
	"net"
	"net/http"
	"testing"
	"time"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"

	"github.com/slipway-ci/slipway/internal/awsclient"
)

// A service that accepts the connection and never answers fails the
// attempt after ResponseTimeout (shortened here), and one that is not
// there at once: no call waits on a dependency without end.
func TestDeadlines(t *testing.T) {
	c, ok := awsclient.HTTPClient().(*awshttp.BuildableClient)
	if !ok {
		t.Fatalf("%T", awsclient.HTTPClient())
	}
	if tr := c.GetTransport(); tr.ResponseHeaderTimeout != awsclient.ResponseTimeout || tr.TLSHandshakeTimeout != awsclient.ConnectTimeout {
		t.Errorf("transport timeouts: headers %s, TLS %s", tr.ResponseHeaderTimeout, tr.TLSHandshakeTimeout)
	}
	if d := c.GetDialer(); d.Timeout != awsclient.ConnectTimeout {
		t.Errorf("dial timeout %s", d.Timeout)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			defer conn.Close()
		}
	}()
	short := c.WithTransportOptions(func(tr *http.Transport) { tr.ResponseHeaderTimeout = 200 * time.Millisecond })
	req, _ := http.NewRequest("GET", "http://"+ln.Addr().String(), nil)
	start := time.Now()
	resp, err := short.Do(req)
	if err == nil {
		resp.Body.Close()
	}
	if err == nil || time.Since(start) > 5*time.Second {
		t.Errorf("a paused service: %v after %s", err, time.Since(start))
	}
}
