package memlimit

import (
	"os"
	"path/filepath"
	"testing"
)

func TestContainerMemoryLimit(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  int64
		err   bool
	}{
		{"cgroup v2 limit", map[string]string{"v2": "536870912\n"}, 536870912, false},
		{"cgroup v2 unlimited", map[string]string{"v2": "max\n"}, 0, false},
		{"cgroup v1 limit", map[string]string{"v1": "268435456\n"}, 268435456, false},
		{"cgroup v1 unlimited", map[string]string{"v1": "9223372036854771712\n"}, 0, false},
		{"v2 wins over v1", map[string]string{"v2": "1000", "v1": "2000"}, 1000, false},
		{"no cgroup files", map[string]string{}, 0, false},
		{"garbage", map[string]string{"v2": "lots"}, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for f, v := range tc.files {
				if err := os.WriteFile(filepath.Join(root, f), []byte(v), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			got, err := containerMemoryLimit(root, []string{"v2", "v1"})
			if (err != nil) != tc.err || got != tc.want {
				t.Fatalf("got %d, %v; want %d, error %v", got, err, tc.want, tc.err)
			}
		})
	}
}

func TestSetKeepsGOMEMLIMIT(t *testing.T) {
	t.Setenv("GOMEMLIMIT", "100MiB")
	if got, err := Set(); got != 0 || err != nil {
		t.Fatalf("Set with GOMEMLIMIT set: %d, %v; want it left alone", got, err)
	}
}
