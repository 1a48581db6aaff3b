package local

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/slipway-ci/slipway/internal/loopback"
)

// proc is a child process the runtime started and stops.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // set when done closes
}

// spawn starts cmd with its output in log, in its own process group, and
// tied to this process where the platform allows (see detach).
func spawn(name string, cmd *exec.Cmd, log io.Writer) (*proc, error) {
	if cmd.Stdout == nil {
		cmd.Stdout = log
	}
	cmd.Stderr = log
	detach(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// stop sends SIGTERM to the process group, and SIGKILL after grace.
func (p *proc) stop(grace time.Duration) {
	if p == nil {
		return
	}
	pgid := -p.cmd.Process.Pid
	_ = syscall.Kill(pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(pgid, syscall.SIGKILL)
		<-p.done
	}
}

// waitReady polls ready until it is true, the process exits, or timeout.
func (p *proc) waitReady(ctx context.Context, timeout time.Duration, ready func() bool) error {
	deadline := time.Now().Add(timeout)
	for !ready() {
		select {
		case <-p.done:
			err := p.err
			if err == nil {
				err = errors.New("exit status 0")
			}
			return fmt.Errorf("%s exited before it answered: %w", p.name, err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not answer in %s", p.name, timeout)
		}
	}
	return nil
}

// answers reports whether anything answers HTTP at url.
func answers(url string) bool {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return true
}

// startDynamoDB runs DynamoDB Local (AWS's jar, from .ci/deps) in memory on
// a free loopback port and returns its URL.
func startDynamoDB(ctx context.Context, dir string, log io.Writer) (*proc, string, error) {
	jar := filepath.Join(dir, "DynamoDBLocal.jar")
	if _, err := os.Stat(jar); err != nil {
		return nil, "", fmt.Errorf("DynamoDB Local is not at %s: run `make deps`, or pass --dynamodb-endpoint", dir)
	}
	if _, err := exec.LookPath("java"); err != nil {
		return nil, "", errors.New("DynamoDB Local needs Java 17: install it, or pass --dynamodb-endpoint")
	}
	addr, err := loopback.FreeAddr()
	if err != nil {
		return nil, "", err
	}
	_, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command("java", "-Djava.library.path=DynamoDBLocal_lib", "-jar", "DynamoDBLocal.jar",
		"-inMemory", "-sharedDb", "-disableTelemetry", "-port", port)
	cmd.Dir = dir
	p, err := spawn("DynamoDB Local", cmd, log)
	if err != nil {
		return nil, "", err
	}
	url := "http://" + addr
	if err := p.waitReady(ctx, time.Minute, func() bool { return answers(url) }); err != nil {
		p.stop(5 * time.Second)
		return nil, "", err
	}
	return p, url, nil
}

// startKMS runs local-kms (built by .ci/deps) on a free loopback port with
// a fresh data folder and returns its URL.
func startKMS(ctx context.Context, binary, dataDir string, log io.Writer) (*proc, string, error) {
	if binary == "" {
		return nil, "", errors.New("local-kms is not built: run `make deps`, or pass --kms-endpoint")
	}
	addr, err := loopback.FreeAddr()
	if err != nil {
		return nil, "", err
	}
	_, port, _ := net.SplitHostPort(addr)
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, "", err
	}
	cmd := exec.Command(binary)
	cmd.Env = append(os.Environ(), "PORT="+port, "KMS_DATA_PATH="+dataDir)
	p, err := spawn("local-kms", cmd, log)
	if err != nil {
		return nil, "", err
	}
	url := "http://" + addr
	if err := p.waitReady(ctx, 30*time.Second, func() bool { return answers(url) }); err != nil {
		p.stop(5 * time.Second)
		return nil, "", err
	}
	return p, url, nil
}

// MinNodeMajor is the oldest Node aws-local-stepfunctions 3 runs on: Node
// 20 fails every Task (Promise.withResolvers is not a function).
const MinNodeMajor = 22

var nodeVersion = regexp.MustCompile(`^v(\d+)\.`)

// checkNode returns the major version of the Node at path, or why it will
// not do.
func checkNode(path string) error {
	out, err := exec.Command(path, "--version").Output()
	if err != nil {
		return fmt.Errorf("node %s: %w", path, err)
	}
	m := nodeVersion.FindStringSubmatch(strings.TrimSpace(string(out)))
	if m == nil {
		return fmt.Errorf("node %s: unreadable version %q", path, out)
	}
	if major, _ := strconv.Atoi(m[1]); major < MinNodeMajor {
		return fmt.Errorf("node %s is %s: the local ASL engine needs Node %d or newer (`make deps` installs it into .cache/node)", path, strings.TrimSpace(string(out)), MinNodeMajor)
	}
	return nil
}

// startShim runs the local Step Functions (statemachine/local/shim.cjs) on
// Node and returns its URL, read from its first line of output.
func startShim(ctx context.Context, o *Options, shim, definition, stateMachineARN, releaseARN, lambdaURL string, log io.Writer) (*proc, string, error) {
	if err := checkNode(o.Node); err != nil {
		return nil, "", err
	}
	if _, err := os.Stat(filepath.Join(o.NodeModules, "aws-local-stepfunctions")); err != nil {
		return nil, "", fmt.Errorf("aws-local-stepfunctions is not in %s: run `make deps` (npm ci), or pass --node-modules", o.NodeModules)
	}
	cmd := exec.Command(o.Node, shim, "--definition", definition, "--state-machine-arn", stateMachineARN,
		"--release-function", releaseARN, "--region", Region)
	cmd.Env = append(os.Environ(), "NODE_PATH="+o.NodeModules, "AWS_ENDPOINT_URL_LAMBDA="+lambdaURL,
		// The engine's SDK must never look for real credentials or regions.
		"AWS_ACCESS_KEY_ID=local", "AWS_SECRET_ACCESS_KEY=local", "AWS_REGION="+Region)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	p, err := spawn("the Step Functions engine", cmd, log)
	if err != nil {
		return nil, "", err
	}
	lines := bufio.NewReader(stdout)
	first := make(chan string, 1)
	go func() {
		line, _ := lines.ReadString('\n')
		first <- line
		_, _ = io.Copy(log, lines)
	}()
	select {
	case line := <-first:
		addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening on ")
		if !ok {
			p.stop(time.Second)
			return nil, "", fmt.Errorf("the local Step Functions did not start (it said %q; see its log)", strings.TrimSpace(line))
		}
		return p, "http://" + addr, nil
	case <-time.After(30 * time.Second):
		p.stop(time.Second)
		return nil, "", errors.New("the local Step Functions did not start in 30 s")
	case <-ctx.Done():
		p.stop(time.Second)
		return nil, "", ctx.Err()
	}
}
