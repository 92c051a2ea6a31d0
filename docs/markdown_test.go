// Package docs tests the Markdown of README.md and docs/.
package docs

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestCodeFencesClose: a code fence is "```" alone, or "```" and a
// language when it opens. A closing fence with text after it (CommonMark
// reads it as no fence at all) leaves the block open, so the prose after
// it renders as code and the next block's commands render as prose.
func TestCodeFencesClose(t *testing.T) {
	files, err := filepath.Glob("*.md")
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, filepath.Join("..", "README.md"))
	fence := regexp.MustCompile("^```[A-Za-z0-9_+-]*$")
	for _, f := range files {
		raw, err := os.ReadFile(f) //nolint:gosec // the repository's own files
		if err != nil {
			t.Fatal(err)
		}
		open := false
		for i, line := range strings.Split(string(raw), "\n") {
			if !strings.HasPrefix(strings.TrimLeft(line, " "), "```") {
				continue
			}
			l := strings.TrimSpace(line)
			switch {
			case !fence.MatchString(l):
				t.Errorf("%s:%d: %q is neither an opening nor a closing code fence", f, i+1, line)
			case open && l != "```":
				t.Errorf("%s:%d: %q opens a block inside an open one", f, i+1, line)
			default:
				open = !open
			}
		}
		if open {
			t.Errorf("%s: a code block is never closed", f)
		}
	}
}
