package local

import (
	"net/http/httptest"
	"testing"
)

// The caller header stands in for API Gateway's IAM auth on loopback only.
func TestCallerHeaderOnLoopbackOnly(t *testing.T) {
	for _, c := range []struct {
		remote, header, want string
		refused              bool
	}{
		{"127.0.0.1:5000", "", "arn:aws:iam::000000000000:role/local", false},
		{"127.0.0.1:5000", "team-a", "arn:aws:iam::000000000000:role/team-a", false},
		{"[::1]:5000", "arn:aws:iam::123456789012:role/ci", "arn:aws:iam::123456789012:role/ci", false},
		{"10.0.0.7:5000", "team-a", "", true},
		{"192.0.2.1:1234", "", "", true},
	} {
		r := httptest.NewRequest("GET", "/v1/stages", nil)
		r.RemoteAddr = c.remote
		if c.header != "" {
			r.Header.Set(CallerHeader, c.header)
		}
		got, err := localCaller(r)
		if (err != nil) != c.refused || got != c.want {
			t.Errorf("%s as %q: %q, %v", c.remote, c.header, got, err)
		}
	}
}
