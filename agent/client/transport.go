package client

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"sync/atomic"
	"time"
)

// Calls go over HTTP/1.1 by default: with one call per kept-alive
// connection, a lone round trip is cheapest (each HTTP/2 call crosses more
// goroutines on the agent). Calls made side by side, as a group's steps are,
// go through a multiplexed transport: one HTTP/2 connection carries them all,
// so a group's first calls to a new VM cost one TLS handshake, not one each.
// docs/benchmarks.md has the figures.
func newHTTP1(dialer *net.Dialer, tlsConfig *tls.Config) *http.Transport {
	config := tlsConfig.Clone()
	config.NextProtos = []string{"http/1.1"}
	return &http.Transport{
		DialContext:         dialer.DialContext,
		TLSClientConfig:     config,
		TLSHandshakeTimeout: handshakeTimeout,
		MaxIdleConns:        128,
		MaxIdleConnsPerHost: 128,
		IdleConnTimeout:     idleConnTimeout,
		// The agent never compresses: asking costs a header and a wrapper per call.
		DisableCompression: true,
	}
}

const (
	handshakeTimeout = 10 * time.Second
	idleConnTimeout  = 90 * time.Second
	// One HTTP/2 connection carries a whole group, so a connection whose
	// peer vanished (a VM terminated without a reset) is found by ping
	// rather than left to stall every step on it.
	pingAfter   = 30 * time.Second
	pingTimeout = 10 * time.Second
	// Log chunks are up to 8 MiB: with HTTP/2's default 16 KiB frames the
	// agent's log throughput fell by a third; 1 MiB frames keep it level
	// with HTTP/1.1.
	maxReadFrameSize = 1 << 20
)

// multiplexed sends calls over one HTTP/2 connection per agent. Its
// transport dials one connection at a time (MaxConnsPerHost), so concurrent
// first calls wait for the one handshake instead of each making its own,
// as they otherwise do before any connection is known to be HTTP/2. An
// agent that offers only HTTP/1.1, as one on a VM started before an upgrade
// does, is remembered and reached over HTTP/1.1 from then on.
type multiplexed struct {
	h2     *http.Transport
	h1     *http.Transport
	h1Only atomic.Bool
}

// errNoHTTP2 is what the HTTP/2 dial returns for an HTTP/1.1-only agent.
var errNoHTTP2 = errors.New("the agent does not offer HTTP/2")

func newMultiplexed(dialer *net.Dialer, tlsConfig *tls.Config, h1 *http.Transport) *multiplexed {
	config := tlsConfig.Clone()
	config.NextProtos = []string{"h2", "http/1.1"}
	m := &multiplexed{h1: h1}
	var http2Only http.Protocols
	http2Only.SetHTTP2(true)
	m.h2 = &http.Transport{
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return m.dial(ctx, dialer, network, addr, config)
		},
		Protocols: &http2Only,
		// For HTTP/2 this bounds the dials in progress, not the connections:
		// a second one opens if the agent's stream limit is ever reached.
		MaxConnsPerHost:    1,
		DisableCompression: true,
		IdleConnTimeout:    idleConnTimeout,
		HTTP2:              &http.HTTP2Config{SendPingTimeout: pingAfter, PingTimeout: pingTimeout, MaxReadFrameSize: maxReadFrameSize},
	}
	return m
}

func (m *multiplexed) dial(ctx context.Context, dialer *net.Dialer, network, addr string, config *tls.Config) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	conn, err := (&tls.Dialer{NetDialer: dialer, Config: config}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if conn.(*tls.Conn).ConnectionState().NegotiatedProtocol != "h2" {
		_ = conn.Close()
		m.h1Only.Store(true)
		return nil, errNoHTTP2
	}
	return conn, nil
}

func (m *multiplexed) RoundTrip(req *http.Request) (*http.Response, error) {
	if !m.h1Only.Load() {
		resp, err := m.h2.RoundTrip(req)
		if !errors.Is(err, errNoHTTP2) {
			return resp, err
		}
		// The dial failed before anything of the request was sent.
		if req, err = rewind(req); err != nil {
			return nil, err
		}
	}
	return m.h1.RoundTrip(req)
}

// rewind gives a request whose body the HTTP/2 attempt closed a fresh copy
// of that body.
func rewind(req *http.Request) (*http.Request, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return req, nil
	}
	if req.GetBody == nil {
		return nil, errors.New("the agent does not offer HTTP/2, and the request body cannot be sent again")
	}
	body, err := req.GetBody()
	if err != nil {
		return nil, err
	}
	again := req.Clone(req.Context())
	again.Body = body
	return again, nil
}

// CloseIdleConnections drops the idle connections of both protocols.
func (m *multiplexed) CloseIdleConnections() {
	m.h2.CloseIdleConnections()
	m.h1.CloseIdleConnections()
}
