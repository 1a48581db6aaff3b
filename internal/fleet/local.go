package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/slipway-ci/slipway/internal/loopback"
)

// Local runs each "instance" as an agent process on 127.0.0.1 with its own
// port, work dir and certificate, set up from the same files the Linux user
// data writes on a VM: `slipway local` and the tests get real agents behind
// the same Provider as EC2.
type Local struct {
	// Dir holds one folder per instance: etc/ (the certificates) and work/.
	Dir string
	// AgentPath is the agent binary to run.
	AgentPath string
	// Stderr receives the agents' logs (nil: discarded).
	Stderr io.Writer

	mu        sync.Mutex
	instances map[string]*localInstance // by launch id
}

var _ Provider = (*Local)(nil)

type localInstance struct {
	Instance
	cmd    *exec.Cmd
	exited chan struct{}
}

// Launch writes the VM's files and starts its agent.
func (l *Local) Launch(_ context.Context, req LaunchRequest) (*Instance, error) {
	b := req.Boot
	port, err := loopback.FreePort()
	if err != nil {
		return nil, fmt.Errorf("local launch %s: %w", b.LaunchID, err)
	}
	b.Port = port // the local agent's own port, whatever the pool's
	if err := b.check(); err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.instances == nil {
		l.instances = map[string]*localInstance{}
	}
	if in, ok := l.instances[b.LaunchID]; ok {
		inst := in.Instance
		return &inst, nil
	}
	dir := filepath.Join(l.Dir, b.LaunchID)
	etc := filepath.Join(dir, "etc")
	if err := os.MkdirAll(etc, 0o700); err != nil {
		return nil, fmt.Errorf("local launch %s: %w", b.LaunchID, err)
	}
	for name, data := range map[string][]byte{CertFile: b.CertPEM, KeyFile: b.KeyPEM, ClientCAFile: b.ClientCAPEM} {
		if err := os.WriteFile(filepath.Join(etc, name), data, 0o600); err != nil {
			return nil, fmt.Errorf("local launch %s: %w", b.LaunchID, err)
		}
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	// The same flags as the user data's systemd unit.
	cmd := exec.Command(l.AgentPath, "--addr", addr,
		"--tls-cert", filepath.Join(etc, CertFile), "--tls-key", filepath.Join(etc, KeyFile),
		"--client-ca", filepath.Join(etc, ClientCAFile), "--work-dir", filepath.Join(dir, "work"))
	if l.Stderr != nil {
		cmd.Stdout, cmd.Stderr = l.Stderr, l.Stderr
	}
	tieToParent(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("local launch %s: start agent: %w", b.LaunchID, err)
	}
	in := &localInstance{
		Instance: Instance{
			ID: "local-" + b.LaunchID, LaunchID: b.LaunchID, Pool: req.Pool.Name, State: Running,
			Address: addr, InstanceType: "local", LaunchedAt: time.Now().UTC(),
		},
		cmd:    cmd,
		exited: make(chan struct{}),
	}
	go func() {
		_ = cmd.Wait()
		l.mu.Lock()
		in.State = Terminated
		l.mu.Unlock()
		close(in.exited)
	}()
	l.instances[b.LaunchID] = in
	inst := in.Instance
	return &inst, nil
}

// Terminate stops the agents (SIGTERM, then SIGKILL after 10 s) and removes
// their folders. Unknown ids count as done.
func (l *Local) Terminate(_ context.Context, ids ...string) error {
	var errs []error
	for _, id := range ids {
		l.mu.Lock()
		var in *localInstance
		for _, cand := range l.instances {
			if cand.ID == id {
				in = cand
			}
		}
		if in != nil && in.State != Terminated {
			in.State = ShuttingDown
		}
		l.mu.Unlock()
		if in == nil {
			continue
		}
		_ = in.cmd.Process.Signal(os.Interrupt)
		select {
		case <-in.exited:
		case <-time.After(10 * time.Second):
			_ = in.cmd.Process.Kill()
			<-in.exited
		}
		if err := os.RemoveAll(filepath.Join(l.Dir, in.LaunchID)); err != nil {
			errs = append(errs, fmt.Errorf("terminate %s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

// List returns every instance launched, terminated ones included.
func (l *Local) List(context.Context) ([]Instance, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Instance, 0, len(l.instances))
	for _, in := range l.instances {
		out = append(out, in.Instance)
	}
	return out, nil
}

// Close terminates every instance still running.
func (l *Local) Close() error {
	instances, _ := l.List(context.Background())
	var ids []string
	for _, in := range instances {
		if !in.State.Gone() {
			ids = append(ids, in.ID)
		}
	}
	return l.Terminate(context.Background(), ids...)
}
