// Package demo is `slipway demo`: what the system does, shown on this
// machine with real parts, from one agent running steps to whole stages
// through slipway local, the delegate's command and the Harness drop-in.
package demo

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/agent/client"
	"github.com/slipway-ci/slipway/agent/executor"
	"github.com/slipway-ci/slipway/internal/busyboximage"
	"github.com/slipway-ci/slipway/internal/localaws"
	"github.com/slipway-ci/slipway/internal/loopback"
	"github.com/slipway-ci/slipway/internal/pki"
)

const demoLaunchID = "demo-vm"

// Run shows the system on this machine, printing to out: a real agent
// process (agentPath) with freshly issued certificates running steps
// through the Go client; then, when DynamoDB Local and local-kms answer
// (their endpoints in the environment, as `make demo` sets them), a warm
// pool of agents and whole stages through slipway local.
func Run(ctx context.Context, out io.Writer, agentPath string) error {
	dir, err := os.MkdirTemp("", "slipway-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	say := func(format string, a ...any) { fmt.Fprintf(out, "\n== "+format+"\n", a...) }

	say("PKI: a CA, the VM's server certificate, an orchestrator client certificate")
	now := time.Now()
	ca, err := pki.InitDir(dir, time.Hour, now)
	if err != nil {
		return err
	}
	server, err := ca.IssueServerFiles(dir, demoLaunchID, time.Hour, now)
	if err != nil {
		return err
	}
	clientPair, err := ca.IssueClientFiles(dir, 10*time.Minute, now)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "server certificate for %s, client certificate for CN=%s\n", pki.ServerName(demoLaunchID), pki.OrchestratorCN)

	addr, err := loopback.FreeAddr()
	if err != nil {
		return err
	}
	say("agent: %s --addr %s", agentPath, addr)
	agent := exec.Command(agentPath, "--addr", addr,
		"--tls-cert", server.CertPath, "--tls-key", server.KeyPath,
		"--client-ca", filepath.Join(dir, pki.CACertFile), "--work-dir", filepath.Join(dir, "work"))
	agentLog, err := os.Create(filepath.Join(dir, "agent.log"))
	if err != nil {
		return err
	}
	defer agentLog.Close()
	agent.Stdout, agent.Stderr = agentLog, agentLog
	if err := agent.Start(); err != nil {
		return fmt.Errorf("start agent: %w", err)
	}
	defer func() {
		_ = agent.Process.Signal(syscall.SIGTERM)
		_ = agent.Wait()
	}()

	cert, err := tls.LoadX509KeyPair(clientPair.CertPath, clientPair.KeyPath)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	c, err := client.New(client.Config{Addr: addr, LaunchID: demoLaunchID, RootCAs: roots, Certificate: client.StaticCertificate(cert)})
	if err != nil {
		return err
	}
	defer c.Close()
	health, err := c.WaitHealthy(ctx, 15*time.Second, 100*time.Millisecond)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "health: version %s, %s/%s, boot id %s, docker %v\n", health.Version, health.OS, health.Arch, health.BootID, health.Docker)

	say("stage: bind with a secret DEMO_TOKEN (its values are masked in logs and outputs)")
	stage := &agentapi.Stage{
		ID:      "demo-stage",
		Env:     map[string]string{"GREETING": "hello from the stage"},
		Secrets: map[string]string{"DEMO_TOKEN": "s3cr3t-demo-token"},
		Files:   []agentapi.File{{Path: "README.txt", Data: []byte("a file the stage brought along\n")}},
	}
	if _, err := c.BindStage(ctx, stage); err != nil {
		return err
	}

	steps := []struct {
		id, title string
		spec      agentapi.Step
	}{
		{"host", "a host step", agentapi.Step{Script: `echo "$GREETING, running on $(uname -s) as pid $$"; cat README.txt`}},
		{"outputs", "a step with outputs", agentapi.Step{Script: `echo "VERSION=1.2.3" >> "$SLIPWAY_OUTPUT"; echo "wrote an output"`, Outputs: []string{"VERSION"}}},
		{"failing", "a failing step", agentapi.Step{Script: "echo about to fail >&2; exit 3"}},
		{"secret", "a step printing the secret, plain and base64", agentapi.Step{Script: `echo "token: $DEMO_TOKEN"; printf %s "$DEMO_TOKEN" | base64`}},
		{"timeout", "a step over its timeout", agentapi.Step{Command: []string{"sleep", "60"}, TimeoutSeconds: 1}},
	}
	if health.Docker {
		if err := ensureImage(ctx); err != nil {
			return err
		}
		steps = append(steps, struct {
			id, title string
			spec      agentapi.Step
		}{"container", "a container step (busybox image, host network)", agentapi.Step{
			Image: busyboximage.Tag, Pull: agentapi.PullNever,
			Script: `echo "in a container: $(cat /proc/1/cgroup | head -1)"; ls /bin | wc -l | xargs echo applets:; echo "$GREETING"`,
		}})
	} else {
		fmt.Fprintln(out, "(no Docker engine: the container step is left out; `make demo` starts one)")
	}
	for _, s := range steps {
		say("step %s: %s", s.id, s.title)
		spec := s.spec
		if err := runAndShow(ctx, out, c, stage.ID, s.id, &spec); err != nil {
			return err
		}
	}

	say("stage: destroy (cancels what still runs, removes the work dir, reports usage)")
	if err := destroyAndShow(ctx, out, c, stage.ID); err != nil {
		return err
	}
	if os.Getenv(localaws.DynamoDBEndpointEnv) == "" {
		fmt.Fprintln(out, "\n(no DynamoDB Local: the warm pool part is left out; `make demo` starts one)")
		return nil
	}
	if err := warmPool(ctx, out, agentPath, say); err != nil {
		return err
	}
	return wholeStages(ctx, out, agentPath, health.Docker, say)
}

// runAndShow runs a step and prints its log and result.
func runAndShow(ctx context.Context, out io.Writer, c *client.Client, stageID, stepID string, spec *agentapi.Step) error {
	st, err := c.RunStep(ctx, stageID, stepID, spec)
	if err != nil {
		return err
	}
	var logs strings.Builder
	if _, err := c.StreamLogs(ctx, stageID, stepID, 0, &logs); err != nil {
		return err
	}
	for _, line := range strings.SplitAfter(logs.String(), "\n") {
		if line != "" {
			fmt.Fprintf(out, "  | %s", line)
		}
	}
	if !strings.HasSuffix(logs.String(), "\n") && logs.Len() > 0 {
		fmt.Fprintln(out)
	}
	exit := "none"
	if st.ExitCode != nil {
		exit = fmt.Sprint(*st.ExitCode)
	}
	fmt.Fprintf(out, "  => state %s, exit code %s, %s", st.State, exit, st.EndedAt.Sub(st.StartedAt).Round(time.Millisecond))
	if len(st.Outputs) > 0 {
		fmt.Fprintf(out, ", outputs %v", st.Outputs)
	}
	if st.Error != "" {
		fmt.Fprintf(out, ", error %q", st.Error)
	}
	fmt.Fprintln(out)
	return nil
}

func destroyAndShow(ctx context.Context, out io.Writer, c *client.Client, stageID string) error {
	usage, err := c.DestroyStage(ctx, stageID)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "usage: %d steps, %.3f s CPU, peak memory %d KiB, disk %d bytes\n",
		usage.Steps, usage.CPUSeconds, usage.PeakMemoryByte/1024, usage.DiskBytes)
	return nil
}

// ensureImage builds the busybox image the container steps run in.
func ensureImage(ctx context.Context) error {
	cli, err := executor.NewDockerClient()
	if err != nil {
		return err
	}
	defer cli.Close()
	if err := busyboximage.Ensure(ctx, cli); err != nil {
		return errors.Join(errors.New("build the demo image"), err)
	}
	return nil
}
