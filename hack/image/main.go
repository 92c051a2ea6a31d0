// Command image builds Custody's container images without a container
// engine, reproducibly: for each binary (manager, gateway) a static Go
// binary (CGO off, -trimpath, no build ID) on a distroless-style base made
// here (/etc/passwd and /etc/group with root and nonroot 65532, an empty
// /tmp; no shell, no package manager, no libc), as an OCI image layout
// with one image per platform. Every file's time, owner and order is
// fixed, and the images' creation time is SOURCE_DATE_EPOCH (the commit's
// time in `make images`), so the same commit gives the same digests.
//
//	go run ./hack/image --out bin/images --version v0.1.0 --platforms linux/amd64,linux/arm64
//
// Each image is bin/images/custody-<name>, an OCI layout whose index.json
// names the version (org.opencontainers.image.ref.name): push it with any
// OCI tool (`skopeo copy oci:bin/images/custody-manager:v0.1.0
// docker://ghcr.io/custody-dev/custody-manager:v0.1.0`).
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// NonRoot is the user the images run as (distroless's nonroot).
const NonRoot = 65532

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	out := fs.String("out", "bin/images", "directory for the OCI layouts, one per image")
	version := fs.String("version", "dev", "the images' version: their tag (ref.name) and label")
	platforms := fs.String("platforms", "linux/amd64,linux/arm64", "comma-separated os/arch to build")
	binaries := fs.String("binaries", "manager,gateway", "comma-separated commands of ./cmd to package")
	revision := fs.String("revision", "", "source revision for the org.opencontainers.image.revision label")
	if err := fs.Parse(args); err != nil {
		return err
	}
	created := time.Unix(0, 0).UTC()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH: %w", err)
		}
		created = time.Unix(sec, 0).UTC()
	}
	work, err := os.MkdirTemp("", "custody-image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	for _, name := range strings.Split(*binaries, ",") {
		idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
		for _, plat := range strings.Split(*platforms, ",") {
			osName, arch, ok := strings.Cut(plat, "/")
			if !ok {
				return fmt.Errorf("--platforms: %q is not os/arch", plat)
			}
			bin := filepath.Join(work, name+"-"+osName+"-"+arch)
			if err := build(name, osName, arch, bin); err != nil {
				return err
			}
			img, err := Image(name, bin, Meta{OS: osName, Arch: arch, Version: *version, Revision: *revision, Created: created})
			if err != nil {
				return err
			}
			idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: osName, Architecture: arch}}})
		}
		dir := filepath.Join(*out, "custody-"+name)
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
		p, err := layout.Write(dir, empty.Index)
		if err != nil {
			return err
		}
		if err := p.AppendIndex(idx, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": *version})); err != nil {
			return err
		}
		d, err := idx.Digest()
		if err != nil {
			return err
		}
		fmt.Printf("%s %s:%s %s\n", dir, "custody-"+name, *version, d)
	}
	return nil
}

// build compiles ./cmd/<name> into out: static, trimmed, without a build ID.
func build(name, goos, goarch, out string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w -buildid=", "-o", out, "./cmd/"+name) //nolint:gosec // fixed command
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+goos, "GOARCH="+goarch, "GOFLAGS=")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("building %s for %s/%s: %w", name, goos, goarch, err)
	}
	return nil
}

// Meta describes one image.
type Meta struct {
	OS, Arch, Version, Revision string
	Created                     time.Time
}

// Image is the image of binary bin, run as /custody-<name> by NonRoot.
func Image(name, bin string, m Meta) (v1.Image, error) {
	base, err := layer(baseFiles(), m.Created)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(bin) //nolint:gosec // the binary just built
	if err != nil {
		return nil, err
	}
	app, err := layer([]file{{name: "custody-" + name, mode: 0o755, data: data}}, m.Created)
	if err != nil {
		return nil, err
	}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err = mutate.AppendLayers(img, base, app)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Created = m.OS, m.Arch, v1.Time{Time: m.Created}
	cf.Config = v1.Config{
		User:       fmt.Sprintf("%d:%d", NonRoot, NonRoot),
		Entrypoint: []string{"/custody-" + name},
		WorkingDir: "/",
		Labels: map[string]string{
			"org.opencontainers.image.title":       "custody-" + name,
			"org.opencontainers.image.description": "Custody " + name + " (https://github.com/custody-dev/custody)",
			"org.opencontainers.image.source":      "https://github.com/custody-dev/custody",
			"org.opencontainers.image.version":     m.Version,
		},
	}
	if m.Revision != "" {
		cf.Config.Labels["org.opencontainers.image.revision"] = m.Revision
	}
	// Each layer's history entry, as a builder would record it.
	cf.History = []v1.History{
		{Created: v1.Time{Time: m.Created}, CreatedBy: "custody hack/image: base (passwd, group, /tmp)"},
		{Created: v1.Time{Time: m.Created}, CreatedBy: "custody hack/image: /custody-" + name},
	}
	return mutate.ConfigFile(img, cf)
}

type file struct {
	name     string
	mode     int64
	dir      bool
	uid, gid int
	data     []byte
}

// baseFiles are the distroless-style base: the users, and a /tmp.
func baseFiles() []file {
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", NonRoot, NonRoot)
	group := fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", NonRoot)
	return []file{
		{name: "etc", mode: 0o755, dir: true},
		{name: "etc/group", mode: 0o644, data: []byte(group)},
		{name: "etc/passwd", mode: 0o644, data: []byte(passwd)},
		{name: "home", mode: 0o755, dir: true},
		{name: "home/nonroot", mode: 0o700, dir: true, uid: NonRoot, gid: NonRoot},
		{name: "tmp", mode: 0o1777, dir: true},
	}
}

// layer is a gzipped tar of files in the order given, every entry with
// the same time and no user or group names: the same files give the same
// digest.
func layer(files []file, mtime time.Time) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: f.mode, Uid: f.uid, Gid: f.gid, ModTime: mtime, Format: tar.FormatPAX}
		if f.dir {
			h.Typeflag, h.Name = tar.TypeDir, f.name+"/"
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	if len(b) == 0 {
		return nil, errors.New("empty layer")
	}
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }, tarball.WithMediaType(types.OCILayer))
}
