// Package busyboximage builds the small container image that tests, benchmarks
// and the demo run container steps in: FROM scratch plus the static busybox
// from Debian's busybox-static, built locally because no registry is reachable.
package busyboximage

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"github.com/slipway-ci/slipway/agent/executor"
)

// Tag is the image's name.
const Tag = "slipway-busybox:local"

// BusyboxPath is where Debian's busybox-static installs the binary.
const BusyboxPath = "/bin/busybox"

// API is the part of the Docker client the build uses.
type API interface {
	ImageInspect(ctx context.Context, imageID string, opts ...client.ImageInspectOption) (image.InspectResponse, error)
	ImageBuild(ctx context.Context, buildContext io.Reader, options build.ImageBuildOptions) (build.ImageBuildResponse, error)
}

// Ensure builds Tag unless the engine already has it.
func Ensure(ctx context.Context, api API) error {
	if _, err := api.ImageInspect(ctx, Tag); err == nil {
		return nil
	} else if !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("inspect %s: %w", Tag, err)
	}
	buildContext, err := contextTar()
	if err != nil {
		return err
	}
	return buildImage(ctx, api, Tag, buildContext)
}

// EnsurePlugin builds tag, an image of Tag whose entrypoint is script (run
// by busybox sh; a layer over Tag, so quick to build again): a stand-in for
// the plugin images CI systems run with no command of their own.
func EnsurePlugin(ctx context.Context, api API, tag, script string) error {
	if err := Ensure(ctx, api); err != nil {
		return err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dockerfile := "FROM " + Tag + "\nCOPY plugin /bin/plugin\nENTRYPOINT [\"/bin/plugin\"]\n"
	for _, f := range []struct {
		name, data string
		mode       int64
	}{{"Dockerfile", dockerfile, 0o644}, {"plugin", "#!/bin/sh\n" + script, 0o755}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data))}); err != nil {
			return err
		}
		if _, err := io.WriteString(tw, f.data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return buildImage(ctx, api, tag, &buf)
}

func buildImage(ctx context.Context, api API, tag string, buildContext io.Reader) error {
	resp, err := api.ImageBuild(ctx, buildContext, build.ImageBuildOptions{
		Tags: []string{tag}, Remove: true, Version: build.BuilderV1, NetworkMode: "none",
	})
	if err != nil {
		return fmt.Errorf("build %s: %w", tag, err)
	}
	defer resp.Body.Close()
	if err := executor.ReadProgress(resp.Body); err != nil {
		return fmt.Errorf("build %s: %w", tag, err)
	}
	return nil
}

// contextTar is the build context: a Dockerfile and a root file system with
// busybox and a symlink for each of its applets.
func contextTar() (io.Reader, error) {
	bin, err := os.ReadFile(BusyboxPath)
	if err != nil {
		return nil, fmt.Errorf("busybox image needs Debian's busybox-static (apt-get install busybox-static): %w", err)
	}
	list, err := exec.Command(BusyboxPath, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("list busybox applets: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dockerfile := "FROM scratch\nCOPY rootfs/ /\nCMD [\"sh\"]\n"
	if err := tw.WriteHeader(&tar.Header{Name: "rootfs/tmp/", Typeflag: tar.TypeDir, Mode: 0o1777}); err != nil {
		return nil, err
	}
	files := []struct {
		name string
		mode int64
		data []byte
	}{
		{"Dockerfile", 0o644, []byte(dockerfile)},
		{"rootfs/bin/busybox", 0o755, bin},
	}
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data))}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	for _, applet := range strings.Fields(string(list)) {
		if applet == "busybox" {
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Name: "rootfs/bin/" + applet, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return &buf, nil
}
