package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// DockerAPI is the part of the Docker Engine API client that Docker uses;
// *client.Client satisfies it.
type DockerAPI interface {
	ImageInspect(ctx context.Context, imageID string, opts ...client.ImageInspectOption) (image.InspectResponse, error)
	ImagePull(ctx context.Context, ref string, options image.PullOptions) (io.ReadCloser, error)
	ContainerCreate(ctx context.Context, config *container.Config, hostConfig *container.HostConfig, networkingConfig *network.NetworkingConfig, platform *ocispec.Platform, containerName string) (container.CreateResponse, error)
	ContainerAttach(ctx context.Context, containerID string, options container.AttachOptions) (types.HijackedResponse, error)
	ContainerWait(ctx context.Context, containerID string, condition container.WaitCondition) (<-chan container.WaitResponse, <-chan error)
	ContainerStart(ctx context.Context, containerID string, options container.StartOptions) error
	ContainerStop(ctx context.Context, containerID string, options container.StopOptions) error
	ContainerInspect(ctx context.Context, containerID string) (container.InspectResponse, error)
	ContainerRemove(ctx context.Context, containerID string, options container.RemoveOptions) error
	ContainerStats(ctx context.Context, containerID string, stream bool) (container.StatsResponseReader, error)
}

// Docker runs steps in containers through the Docker Engine API.
type Docker struct {
	API DockerAPI
}

var _ Executor = (*Docker)(nil)

// NewDockerClient returns an Engine API client configured from the
// environment (DOCKER_HOST and friends) that negotiates the API version, so it
// works with engines as old as API 1.41.
func NewDockerClient() (*client.Client, error) {
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	return cli, nil
}

// removeTimeout bounds the clean-up calls made after a step has ended.
const removeTimeout = 30 * time.Second

type dockerHandle struct {
	d    *Docker
	spec Spec

	mu      sync.Mutex
	id      string        // container id, once created
	stopped bool          // Stop was called
	grace   time.Duration // of the first Stop

	done   chan struct{}
	result Result // set before done is closed
}

// Start returns at once; pulling, creating and starting the container happen
// in the background, and a failure there ends the step with Result.Err.
func (d *Docker) Start(_ context.Context, spec Spec) (Handle, error) {
	if spec.Image == "" {
		return nil, errors.New("container step has no image")
	}
	h := &dockerHandle{d: d, spec: spec, done: make(chan struct{})}
	go func() {
		h.result = h.run(context.Background())
		close(h.done)
	}()
	return h, nil
}

func (h *dockerHandle) Wait() Result {
	<-h.done
	return h.result
}

func (h *dockerHandle) Stop(grace time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped {
		return
	}
	h.stopped, h.grace = true, grace
	if h.id != "" {
		go h.stopContainer(h.id, grace)
	}
}

func (h *dockerHandle) stopContainer(id string, grace time.Duration) {
	secs := int(math.Ceil(grace.Seconds()))
	ctx, cancel := context.WithTimeout(context.Background(), grace+removeTimeout)
	defer cancel()
	_ = h.d.API.ContainerStop(ctx, id, container.StopOptions{Timeout: &secs})
}

func failed(err error) Result { return Result{ExitCode: -1, Err: err} }

func (h *dockerHandle) run(ctx context.Context) Result {
	api, spec := h.d.API, h.spec
	if err := h.ensureImage(ctx); err != nil {
		return failed(err)
	}
	id, err := h.create(ctx)
	if err != nil {
		return failed(err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), removeTimeout)
		defer cancel()
		_ = api.ContainerRemove(rctx, id, container.RemoveOptions{Force: true, RemoveVolumes: true})
	}()

	h.mu.Lock()
	h.id = id
	stopped := h.stopped
	h.mu.Unlock()
	if stopped {
		return failed(errors.New("step stopped before its container started"))
	}

	// Attach and wait before start, so no output and no exit is missed.
	att, err := api.ContainerAttach(ctx, id, container.AttachOptions{Stream: true, Stdout: true, Stderr: true})
	if err != nil {
		return failed(fmt.Errorf("attach to container: %w", err))
	}
	defer att.Close()
	waitC, waitErrC := api.ContainerWait(ctx, id, container.WaitConditionNextExit)
	if err := api.ContainerStart(ctx, id, container.StartOptions{}); err != nil {
		return failed(fmt.Errorf("start container: %w", err))
	}
	pumped := make(chan struct{})
	go func() {
		defer close(pumped)
		// One writer for both streams keeps them in the order they arrive.
		_, _ = stdcopy.StdCopy(spec.Output, spec.Output, att.Reader)
	}()
	statsCtx, stopStats := context.WithCancel(ctx)
	stats := make(chan usage, 1)
	go func() { stats <- h.watchStats(statsCtx, id) }()

	res := Result{ExitCode: -1}
	select {
	case w := <-waitC:
		res.ExitCode = int(w.StatusCode)
		if w.Error != nil && w.Error.Message != "" {
			res.Err = fmt.Errorf("wait for container: %s", w.Error.Message)
		}
	case err := <-waitErrC:
		res.Err = fmt.Errorf("wait for container: %w", err)
	}
	select {
	case <-pumped:
	case <-time.After(drainTimeout):
		att.Close()
		<-pumped
	}
	stopStats()
	u := <-stats
	res.CPU, res.PeakMemory = u.cpu, u.peakMemory
	if info, err := api.ContainerInspect(ctx, id); err == nil && info.State != nil {
		res.OOMKilled = info.State.OOMKilled
	}
	return res
}

func (h *dockerHandle) ensureImage(ctx context.Context) error {
	api, spec := h.d.API, h.spec
	if spec.Pull != "always" {
		_, err := api.ImageInspect(ctx, spec.Image)
		if err == nil {
			return nil
		}
		if !cerrdefs.IsNotFound(err) {
			return fmt.Errorf("inspect image %s: %w", spec.Image, err)
		}
		if spec.Pull == "never" {
			return fmt.Errorf("image %s is not on this machine and pull is never", spec.Image)
		}
	}
	rc, err := api.ImagePull(ctx, spec.Image, image.PullOptions{RegistryAuth: spec.RegistryAuth})
	if err != nil {
		return fmt.Errorf("pull image %s: %w", spec.Image, err)
	}
	defer rc.Close()
	if err := ReadProgress(rc); err != nil {
		return fmt.Errorf("pull image %s: %w", spec.Image, err)
	}
	return nil
}

// ReadProgress reads a Docker Engine progress stream (an image pull's or
// build's) to its end: the work goes on only while it is read, and an error
// in the middle of it arrives as a message in the stream.
func ReadProgress(r io.Reader) error {
	dec := json.NewDecoder(r)
	for {
		var msg struct {
			Error string `json:"error"`
		}
		if err := dec.Decode(&msg); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
		if msg.Error != "" {
			return errors.New(msg.Error)
		}
	}
}

func (h *dockerHandle) create(ctx context.Context) (string, error) {
	api, spec := h.d.API, h.spec
	cfg := &container.Config{
		Image:        spec.Image,
		Env:          spec.Env,
		WorkingDir:   spec.Dir,
		User:         spec.User,
		AttachStdout: true,
		AttachStderr: true,
	}
	if len(spec.Argv) > 0 {
		cfg.Entrypoint = spec.Argv[:1]
		cfg.Cmd = spec.Argv[1:]
		if len(cfg.Cmd) == 0 {
			// An empty Cmd would let the image's CMD through as arguments.
			cfg.Cmd = []string{}
		}
	}
	netMode := spec.Network
	if netMode == "" {
		netMode = "host"
	}
	hostCfg := &container.HostConfig{NetworkMode: container.NetworkMode(netMode), Privileged: spec.Privileged}
	if spec.MemoryBytes > 0 {
		hostCfg.Memory = spec.MemoryBytes
		hostCfg.MemorySwap = spec.MemoryBytes // no swap on top: the limit is the limit
	}
	for _, m := range spec.Mounts {
		hostCfg.Binds = append(hostCfg.Binds, m+":"+m)
	}
	for host, inContainer := range spec.Aliases {
		hostCfg.Binds = append(hostCfg.Binds, host+":"+inContainer)
	}
	name := "slipway-" + spec.Name
	created, err := api.ContainerCreate(ctx, cfg, hostCfg, nil, nil, name)
	if cerrdefs.IsConflict(err) {
		// A container of this name outlived an earlier agent: it is ours.
		_ = api.ContainerRemove(ctx, name, container.RemoveOptions{Force: true})
		created, err = api.ContainerCreate(ctx, cfg, hostCfg, nil, nil, name)
	}
	if err != nil {
		return "", fmt.Errorf("create container: %w", err)
	}
	return created.ID, nil
}

type usage struct {
	cpu        time.Duration
	peakMemory int64
}

// watchStats follows the container's stats stream until ctx ends and returns
// the last CPU total and the largest memory figure seen: the engine forgets a
// container's counters once it exits.
func (h *dockerHandle) watchStats(ctx context.Context, id string) usage {
	var u usage
	resp, err := h.d.API.ContainerStats(ctx, id, true)
	if err != nil {
		return u
	}
	defer resp.Body.Close()
	go func() {
		<-ctx.Done()
		_ = resp.Body.Close()
	}()
	dec := json.NewDecoder(resp.Body)
	for {
		var s container.StatsResponse
		if err := dec.Decode(&s); err != nil {
			return u
		}
		if cpu := time.Duration(s.CPUStats.CPUUsage.TotalUsage); cpu > u.cpu {
			u.cpu = cpu
		}
		peak := max(s.MemoryStats.MaxUsage, s.MemoryStats.Usage, s.MemoryStats.CommitPeak)
		u.peakMemory = max(u.peakMemory, int64(peak))
	}
}
