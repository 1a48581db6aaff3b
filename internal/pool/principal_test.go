package pool_test

import (
	"strings"
	"testing"

	"github.com/slipway-ci/slipway/internal/pool"
)

func TestPrincipalPatterns(t *testing.T) {
	const role = "arn:aws:iam::123456789012:role/ci/team-a-delegate"
	for _, c := range []struct {
		pattern string
		want    bool
	}{
		{role, true},
		{"arn:aws:iam::123456789012:role/*", true},
		{"arn:aws:iam::123456789012:role/ci/team-?-delegate", true},
		{"arn:aws:iam::*:role/ci/*-delegate", true},
		{"*", true},
		{"arn:aws:iam::123456789012:role/ci/team-b-*", false},
		{"arn:aws:iam::123456789012:role/ci", false},
		{"arn:aws:iam::210987654321:role/*", false},
		{"arn:aws:iam::123456789012:role/ci/team-a-delegate-*", false},
		{"*team-a-delegatex", false},
	} {
		if got := pool.MatchesAny([]string{c.pattern}, role); got != c.want {
			t.Errorf("%q matches %s: %v, want %v", c.pattern, role, got, c.want)
		}
	}
	open := pool.Pool{}
	closed := pool.Pool{Principals: []string{"arn:aws:iam::123456789012:role/ci/team-b-*"}}
	if !open.Admits(role) || closed.Admits(role) {
		t.Errorf("a pool without principals admits %v, one naming others %v", open.Admits(role), closed.Admits(role))
	}
}

func TestBadPrincipalsAreNamed(t *testing.T) {
	_, err := pool.Parse([]byte(`pools:
  - {name: p, os: linux, arch: arm64, instance_types: [c7g.large], ami: ami-0123456789abcdef0, max_instances: 2,
     subnets: [subnet-0123456789abcdef0], security_groups: [sg-0123456789abcdef0],
     principals: ["arn:aws:iam::123456789012:role/ci", "", "team a"]}
`))
	for _, want := range []string{`pool p: principals[1]: ""`, `pool p: principals[2]: "team a"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %q: %v", want, err)
		}
	}
	if err != nil && strings.Contains(err.Error(), "principals[0]") {
		t.Errorf("a good principal refused: %v", err)
	}
}
