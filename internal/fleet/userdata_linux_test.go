//go:build linux

package fleet

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/slipway-ci/slipway/agent/agenttest"
	"github.com/slipway-ci/slipway/internal/busyboximage"
	"github.com/slipway-ci/slipway/internal/loopback"
	"github.com/slipway-ci/slipway/internal/pki"
)

// stubSystemctl stands in for systemd in the container: enable --now starts
// the unit's ExecStart in the background, as systemd would.
const stubSystemctl = `#!/bin/sh
case "$1" in
  daemon-reload) exit 0 ;;
  enable)
    unit=/etc/systemd/system/$3
    cmd=$(sed -n 's/^ExecStart=//p' "$unit")
    $cmd > /var/log/slipway-agent.log 2>&1 &
    exit 0 ;;
  *) echo "stub systemctl: $*" >&2; exit 1 ;;
esac
`

// TestLinuxUserDataBootsAnAgent runs the Linux user data for real in a
// busybox container: it downloads the real agent binary over HTTP, writes
// the certificates, starts the unit, and the agent then answers over mTLS.
func TestLinuxUserDataBootsAnAgent(t *testing.T) {
	cli := agenttest.Docker(t)
	dir := t.TempDir()
	downloads := httptest.NewServer(http.FileServer(http.Dir(filepath.Dir(agenttest.BuildAgent(t)))))
	defer downloads.Close()

	ca, err := pki.InitDir(filepath.Join(dir, "pki"), time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	launchID := "vm-0123456789abcdef0123"
	pair, err := ca.IssueServerFiles(filepath.Join(dir, "pki"), launchID, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _ := os.ReadFile(pair.CertPath)
	keyPEM, _ := os.ReadFile(pair.KeyPath)
	port, err := loopback.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	script, err := LinuxUserData(Boot{
		LaunchID: launchID, CertPEM: certPEM, KeyPEM: keyPEM, ClientCAPEM: pki.CertPEM(ca.Cert),
		AgentURL: downloads.URL + "/slipway-agent", Port: port,
		ExtraUserData: "echo user data ran > /tmp/extra-ran\n",
	})
	if err != nil {
		t.Fatal(err)
	}
	testDir := filepath.Join(dir, "boot")
	if err := os.MkdirAll(testDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"userdata.sh": script, "systemctl": []byte(stubSystemctl)} {
		if err := os.WriteFile(filepath.Join(testDir, name), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	created, err := cli.ContainerCreate(ctx, &container.Config{
		Image: busyboximage.Tag,
		Cmd: []string{"sh", "-c", "cp /boot/systemctl /bin/systemctl && sh -e /boot/userdata.sh && " +
			"stat -c '%a %n' /etc/slipway/* && cat /tmp/extra-ran && sleep 300"},
	}, &container.HostConfig{NetworkMode: "host", Binds: []string{testDir + ":/boot:ro"}}, nil, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cli.ContainerRemove(context.Background(), created.ID, container.RemoveOptions{Force: true})
	}()
	if err := cli.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	logs := func() string {
		rc, err := cli.ContainerLogs(ctx, created.ID, container.LogsOptions{ShowStdout: true, ShowStderr: true})
		if err != nil {
			return err.Error()
		}
		defer rc.Close()
		var b strings.Builder
		_, _ = stdcopy.StdCopy(&b, &b, rc)
		return b.String()
	}

	// The orchestrator's view: mTLS to the VM's address, naming the VM.
	c := agenttest.NewOrchestrator(t, ca).Client(t, "127.0.0.1:"+strconv.Itoa(port), launchID)
	if h, err := c.WaitHealthy(ctx, 60*time.Second, 200*time.Millisecond); err != nil || h.BootID == "" {
		t.Fatalf("health %+v, %v\ncontainer output:\n%s", h, err, logs())
	}
	// The agent may answer before the user data's last lines ran.
	out := logs()
	for end := time.Now().Add(30 * time.Second); !strings.Contains(out, "user data ran") && time.Now().Before(end); out = logs() {
		time.Sleep(100 * time.Millisecond)
	}
	for _, want := range []string{"600 /etc/slipway/agent.key", "600 /etc/slipway/agent.crt", "600 /etc/slipway/client-ca.crt", "user data ran"} {
		if !strings.Contains(out, want) {
			t.Errorf("container output lacks %q:\n%s", want, out)
		}
	}
}
