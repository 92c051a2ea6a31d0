package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/custody-dev/custody/internal/testtools"
)

// TestImages builds both images for linux/amd64 twice, from different
// directories, and inspects them: the same digests (reproducible); a
// non-root user; an entrypoint that is a static binary which runs; the
// files of the base and the binary and nothing else (no shell, no package
// manager, no libc); and skopeo, a third-party OCI tool, reads the same
// configuration from the layout.
func TestImages(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the manager and the gateway")
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	t.Chdir(root)
	digests := func(out string) map[string]v1.Hash {
		t.Helper()
		if err := run([]string{"--out", out, "--version", "v9.9.9-test", "--platforms", "linux/amd64"}); err != nil {
			t.Fatal(err)
		}
		d := map[string]v1.Hash{}
		for _, name := range []string{"manager", "gateway"} {
			idx, err := layout.ImageIndexFromPath(filepath.Join(out, "custody-"+name))
			if err != nil {
				t.Fatal(err)
			}
			if d[name], err = idx.Digest(); err != nil {
				t.Fatal(err)
			}
		}
		return d
	}
	first, second := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "elsewhere", "b")
	d1, d2 := digests(first), digests(second)
	for name := range d1 {
		if d1[name] != d2[name] {
			t.Errorf("custody-%s is not reproducible: %s, then %s", name, d1[name], d2[name])
		}
	}

	for _, name := range []string{"manager", "gateway"} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(first, "custody-"+name)
			top, err := layout.ImageIndexFromPath(dir)
			if err != nil {
				t.Fatal(err)
			}
			tm, err := top.IndexManifest()
			if err != nil {
				t.Fatal(err)
			}
			if len(tm.Manifests) != 1 || tm.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "v9.9.9-test" {
				t.Fatalf("index.json does not name the version: %+v", tm.Manifests)
			}
			idx, err := top.ImageIndex(tm.Manifests[0].Digest)
			if err != nil {
				t.Fatal(err)
			}
			im, err := idx.IndexManifest()
			if err != nil {
				t.Fatal(err)
			}
			if len(im.Manifests) != 1 || im.Manifests[0].Platform == nil || im.Manifests[0].Platform.Architecture != "amd64" || im.Manifests[0].Platform.OS != "linux" {
				t.Fatalf("the image index lists %+v", im.Manifests)
			}
			img, err := idx.Image(im.Manifests[0].Digest)
			if err != nil {
				t.Fatal(err)
			}
			cf, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			entry := "/custody-" + name
			if cf.Config.User != "65532:65532" {
				t.Errorf("runs as %q, not the nonroot user 65532", cf.Config.User)
			}
			if !slices.Equal(cf.Config.Entrypoint, []string{entry}) || len(cf.Config.Cmd) != 0 {
				t.Errorf("entrypoint %v, cmd %v", cf.Config.Entrypoint, cf.Config.Cmd)
			}

			// The files, layer by layer.
			files := map[string]*tar.Header{}
			var binary []byte
			layers, err := img.Layers()
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range layers {
				rc, err := l.Uncompressed()
				if err != nil {
					t.Fatal(err)
				}
				tr := tar.NewReader(rc)
				for {
					h, err := tr.Next()
					if errors.Is(err, io.EOF) {
						break
					}
					if err != nil {
						t.Fatal(err)
					}
					files[strings.TrimSuffix(h.Name, "/")] = h
					if "/"+h.Name == entry {
						if binary, err = io.ReadAll(tr); err != nil {
							t.Fatal(err)
						}
					}
				}
				_ = rc.Close()
			}
			want := []string{"etc", "etc/group", "etc/passwd", "home", "home/nonroot", "tmp", strings.TrimPrefix(entry, "/")}
			var got []string
			for n := range files {
				got = append(got, n)
			}
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("the image holds %v, want exactly %v (no shell, no package manager, no libc)", got, want)
			}
			if h := files[strings.TrimPrefix(entry, "/")]; h == nil || h.Typeflag != tar.TypeReg || h.Mode&0o111 == 0 || h.Uid != 0 || h.Mode&0o022 != 0 {
				t.Errorf("the entrypoint is %+v: want a regular, executable file owned by root that the user cannot change", h)
			}
			if h := files["tmp"]; h == nil || h.Mode&0o1777 != 0o1777 {
				t.Errorf("/tmp is %+v, want sticky and world-writable", h)
			}
			if h := files["etc/passwd"]; h == nil {
				t.Error("no /etc/passwd")
			}

			// Static: no interpreter, no shared libraries; and it runs.
			bin := filepath.Join(t.TempDir(), "entry")
			if err := os.WriteFile(bin, binary, 0o700); err != nil { //nolint:gosec // an executable, the test's own
				t.Fatal(err)
			}
			f, err := elf.Open(bin)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range f.Progs {
				if p.Type == elf.PT_INTERP {
					t.Error("the entrypoint asks for a dynamic loader: not static")
				}
			}
			if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
				t.Errorf("the entrypoint needs shared libraries %v", libs)
			}
			_ = f.Close()
			out, err := exec.Command(bin, "-h").CombinedOutput() //nolint:gosec // the binary from the image
			var exit *exec.ExitError
			if err != nil && (!errors.As(err, &exit) || exit.ExitCode() != 2) || !bytes.Contains(out, []byte("Usage")) {
				t.Errorf("%s -h: %v\n%s", entry, err, out)
			}

			// A third-party OCI tool reads the same image.
			skopeo := testtools.Need(t, "skopeo", "skopeo")
			raw, err := exec.Command(skopeo, "inspect", "--config", "oci:"+dir+":v9.9.9-test").Output() //nolint:gosec // a test directory
			if err != nil {
				t.Fatalf("skopeo inspect: %v", err)
			}
			var sc struct {
				Config struct {
					User       string
					Entrypoint []string
				} `json:"config"`
			}
			if err := json.Unmarshal(raw, &sc); err != nil {
				t.Fatal(err)
			}
			if sc.Config.User != "65532:65532" || !slices.Equal(sc.Config.Entrypoint, []string{entry}) {
				t.Errorf("skopeo reads user %q and entrypoint %v", sc.Config.User, sc.Config.Entrypoint)
			}
		})
	}
}
