package main

import (
	"strings"
	"testing"
)

func TestParseFlags(t *testing.T) {
	o, err := parseFlags([]string{"--tls-cert", "c", "--tls-key", "k", "--client-ca", "ca", "--max-log-bytes", "1024"})
	if err != nil {
		t.Fatal(err)
	}
	if o.addr != ":9079" || o.maxLogBytes != 1024 || o.docker != "auto" || o.procs != 1 {
		t.Fatalf("options %+v", o)
	}
	_, err = parseFlags([]string{"--max-log-bytes", "-5", "--docker", "maybe", "--procs", "0"})
	for _, want := range []string{"--max-log-bytes", "--tls-cert is required", "--tls-key is required", "--client-ca is required", "--docker", "--procs"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err %v does not mention %q", err, want)
		}
	}
}

func TestFlagsFromEnvironment(t *testing.T) {
	t.Setenv("SLIPWAY_AGENT_ADDR", "127.0.0.1:1")
	t.Setenv("SLIPWAY_AGENT_TLS_CERT", "c")
	t.Setenv("SLIPWAY_AGENT_TLS_KEY", "k")
	t.Setenv("SLIPWAY_AGENT_CLIENT_CA", "ca")
	o, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if o.addr != "127.0.0.1:1" || o.certPath != "c" {
		t.Fatalf("options %+v", o)
	}
}
