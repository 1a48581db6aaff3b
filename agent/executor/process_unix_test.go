//go:build unix

package executor

import (
	"strings"
	"testing"
)

func TestCredential(t *testing.T) {
	tests := []struct {
		spec     string
		uid, gid uint32
		wantErr  string
	}{
		{spec: "1000:2000", uid: 1000, gid: 2000},
		{spec: "0", uid: 0, gid: 0},
		{spec: "4294967296", wantErr: "bad uid"},
		{spec: "1:x", wantErr: "bad gid"},
	}
	for _, tt := range tests {
		cred, err := Credential(tt.spec)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%q: err %v, want %q", tt.spec, err, tt.wantErr)
			}
			continue
		}
		if err != nil || cred.Uid != tt.uid || cred.Gid != tt.gid {
			t.Errorf("%q: %+v %v", tt.spec, cred, err)
		}
	}
}
