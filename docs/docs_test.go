// Package docs holds Slipway's reference pages; its test checks that the
// README and the pages link only to what exists.
package docs

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"unicode"
)

// pages are the README and every page here, as paths from the repository's
// root.
func pages(t *testing.T) []string {
	t.Helper()
	found, err := filepath.Glob("*.md")
	if err != nil {
		t.Fatal(err)
	}
	paths := []string{"README.md"}
	for _, f := range found {
		paths = append(paths, filepath.Join("docs", f))
	}
	return paths
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", path))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var link = regexp.MustCompile(`\]\(([^)\s]+)\)`)

// prose is the text's lines with those of code blocks left empty: a link
// in a code block is not one.
func prose(text string) []string {
	lines := strings.Split(text, "\n")
	fenced := false
	for i, line := range lines {
		fence := strings.HasPrefix(strings.TrimSpace(line), "```")
		if fence {
			fenced = !fenced
		}
		if fence || fenced {
			lines[i] = ""
		}
	}
	return lines
}

// anchors are the ids GitHub gives a page's headings: lower case, spaces to
// hyphens, punctuation other than hyphens and underscores dropped.
func anchors(text string) map[string]bool {
	ids := map[string]bool{}
	for _, line := range prose(text) {
		title, ok := strings.CutPrefix(line, "#")
		if !ok {
			continue
		}
		title = strings.TrimSpace(strings.TrimLeft(title, "#"))
		var id strings.Builder
		for _, r := range strings.ToLower(title) {
			switch {
			case r == ' ':
				id.WriteRune('-')
			case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
				id.WriteRune(r)
			}
		}
		ids[id.String()] = true
	}
	return ids
}

// TestRelativeLinks: every relative link of the README and the pages names
// a file of the repository, and a heading of it when it has an anchor.
func TestRelativeLinks(t *testing.T) {
	for _, page := range pages(t) {
		for n, line := range prose(read(t, page)) {
			for _, m := range link.FindAllStringSubmatch(line, -1) {
				target := m[1]
				if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				file, anchor, _ := strings.Cut(target, "#")
				path := page
				if file != "" {
					path = filepath.Join(filepath.Dir(page), file)
				}
				if _, err := os.Stat(filepath.Join("..", path)); err != nil {
					t.Errorf("%s:%d: the link to %s names no file", page, n+1, target)
					continue
				}
				if anchor != "" && !anchors(read(t, path))[anchor] {
					t.Errorf("%s:%d: %s has no heading #%s", page, n+1, path, anchor)
				}
			}
		}
	}
}

// TestEveryPageIsLinked: a page the README does not link is a page no
// newcomer finds.
func TestEveryPageIsLinked(t *testing.T) {
	readme := read(t, "README.md")
	for _, page := range pages(t)[1:] {
		if !strings.Contains(readme, "]("+filepath.ToSlash(page)) {
			t.Errorf("the README does not link %s", page)
		}
	}
}

var benchRow = regexp.MustCompile("(?m)^\\| `([a-z0-9_]+)` \\|")

// TestBenchmarkTableNamesWhatTheCodePrints: each row of the README's
// benchmark table is a BENCH line some benchmark prints (a name whose first
// word a benchmark fills in, as the drop-in's and the runner's, counts).
func TestBenchmarkTableNamesWhatTheCodePrints(t *testing.T) {
	var sources strings.Builder
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") && path != ".." || d.Name() == "node_modules" || d.Name() == "cdk.out") {
			return filepath.SkipDir
		}
		if strings.HasSuffix(path, "_test.go") {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			sources.Write(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	code := sources.String()
	rows := benchRow.FindAllStringSubmatch(read(t, "README.md"), -1)
	if len(rows) < 10 {
		t.Fatalf("found %d rows in the README's benchmark table", len(rows))
	}
	for _, row := range rows {
		name := row[1]
		_, rest, _ := strings.Cut(name, "_")
		if !strings.Contains(code, `"`+name+`"`) && !strings.Contains(code, "BENCH "+name+" ") &&
			!strings.Contains(code, "%s_"+rest+" ") {
			t.Errorf("the README's benchmark table has %s, which no benchmark prints", name)
		}
	}
}
