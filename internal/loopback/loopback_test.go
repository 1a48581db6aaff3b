package loopback_test

import (
	"net"
	"testing"

	"github.com/slipway-ci/slipway/internal/loopback"
)

func TestFreeAddrCanBeListenedOn(t *testing.T) {
	addr, err := loopback.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	ln.Close()
	if host, _, _ := net.SplitHostPort(addr); host != "127.0.0.1" {
		t.Errorf("%s is not on loopback", addr)
	}
}
