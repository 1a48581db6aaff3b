// Package loopback finds free ports on 127.0.0.1 for the processes Slipway
// starts locally (agents, services, the demo's servers).
package loopback

import (
	"net"
	"strconv"
)

// FreePort is a port on 127.0.0.1 that nothing listened on a moment ago.
// Another process may take it before the caller does; callers start on it
// at once.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// FreeAddr is FreePort as a host:port address.
func FreeAddr() (string, error) {
	port, err := FreePort()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), nil
}
