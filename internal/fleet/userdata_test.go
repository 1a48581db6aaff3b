package fleet

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func goldenBoot() Boot {
	pem := func(kind, body string) []byte {
		return []byte("-----BEGIN " + kind + "-----\n" + body + "\n-----END " + kind + "-----\n")
	}
	return Boot{
		LaunchID:      "vm-0123456789abcdef0123",
		CertPEM:       pem("CERTIFICATE", "TUlJQ2VydGlmaWNhdGU="),
		KeyPEM:        pem("PRIVATE KEY", "TUlJS2V5"),
		ClientCAPEM:   pem("CERTIFICATE", "TUlJQ0E="),
		AgentURL:      "https://artifacts.example/slipway-agent-v1",
		Port:          DefaultPort,
		ExtraUserData: "echo 'it''s mine' `whoami` $HOME\nSLIPWAY_PEM\n'@\n",
	}
}

func TestUserDataGolden(t *testing.T) {
	tests := []struct {
		name   string
		render func(Boot) ([]byte, error)
	}{
		{name: "linux.sh", render: LinuxUserData},
		{name: "windows.ps1", render: WindowsUserData},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.render(goldenBoot())
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", "userdata-"+tt.name)
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update once to write it)", err)
			}
			if string(got) != string(want) {
				t.Fatalf("user data differs from %s (go test -update rewrites it):\n%s", path, got)
			}
			// The user's script cannot end a heredoc or a string: it travels encoded.
			if strings.Contains(string(got), "whoami") {
				t.Error("the pool's script appears in clear text")
			}
		})
	}
}

func TestUserDataRefusesBadInput(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Boot)
		want   string
	}{
		{name: "not pem", modify: func(b *Boot) { b.KeyPEM = []byte("key") }, want: "the key is not one PEM block"},
		{name: "pem with a shell line", modify: func(b *Boot) {
			b.CertPEM = []byte("-----BEGIN CERTIFICATE-----\nSLIPWAY_PEM\nrm -rf /\n-----END CERTIFICATE-----\n")
		}, want: "the certificate is not one PEM block"},
		{name: "url with quote", modify: func(b *Boot) { b.AgentURL = "https://x/a'b" }, want: "agent URL"},
		{name: "port", modify: func(b *Boot) { b.Port = 0 }, want: "port 0"},
		{name: "too big", modify: func(b *Boot) { b.ExtraUserData = strings.Repeat("x", 16<<10) }, want: "over EC2's"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := goldenBoot()
			tt.modify(&b)
			for _, render := range []func(Boot) ([]byte, error){LinuxUserData, WindowsUserData} {
				if _, err := render(b); err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("err %v, want %q", err, tt.want)
				}
			}
		})
	}
}
