package stagecli_test

import (
	"os"
	"strings"
	"testing"

	"github.com/slipway-ci/slipway/internal/stagecli"
)

func TestStageFile(t *testing.T) {
	spec, err := stagecli.LoadStageFile("testdata/stage.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if spec.Pool != "linux" || len(spec.Groups) != 2 || !spec.Groups[1].Final || spec.Groups[0].Steps[1].Image != "golangci/golangci-lint:v2" ||
		spec.Groups[1].Steps[0].TimeoutSeconds != 600 || spec.Groups[1].Steps[0].Env["CGO_ENABLED"] != "0" || spec.TimeoutSeconds != 1800 ||
		spec.Groups[0].Steps[0].Outputs[0] != "VERSION" || spec.Groups[0].Steps[0].Script != "go build ./...\n" {
		t.Fatalf("spec %+v", spec)
	}
}

// TestStageFileErrors: every problem at once, each with its line.
func TestStageFileErrors(t *testing.T) {
	for _, tt := range []struct {
		name, file string
		want       []string
	}{
		{"unknown fields and secrets", `pool: p
timeout: 10
secrets:
  TOKEN: abc
groups:
  - steps:
      - id: a
        run_script: make
`, []string{`line 2: timeout: unknown field (known here: acquire_timeout_seconds, env, files, groups, id, idle_timeout_seconds, pool, timeout_seconds)`,
			"line 3: secrets: secrets do not belong in a file", "line 8: groups[0].steps[0].run_script: unknown field"}},
		{"shapes", `pool: [a]
groups:
  steps: []
`, []string{"line 1: pool: want a single value", "line 3: groups: want a list"}},
		{"validation", `pool: p
groups:
  - final: true
    steps:
      - id: a
        script: x
  - steps:
      - id: "bad id"
        script: y
`, []string{"line 3: groups[0]: final, but groups follow it", "line 8: groups[1].steps[0].id:"}},
		{"values of the wrong kind, in the file's terms", `pool: p
timeout_seconds: soon
groups:
  - steps:
      - id: a
        script: true
        env:
          PORT: 8080
          DEBUG: "yes"
        privileged: maybe
`, []string{`line 2: timeout_seconds: soon is not a whole number`,
			`line 6: groups[0].steps[0].script: true is not a string (YAML reads it as bool: quote it, "true")`,
			`line 8: groups[0].steps[0].env.PORT: 8080 is not a string (YAML reads it as int: quote it, "8080")`,
			`line 10: groups[0].steps[0].privileged: maybe is not true or false`}},
		{"not YAML", "pool: [", []string{"yaml:"}},
		{"empty", "", []string{"line 1: the file is empty"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := stagecli.ParseStageFile([]byte(tt.file))
			for _, want := range tt.want {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("error %v\nlacks %q", err, want)
				}
			}
			if err != nil && strings.Contains(err.Error(), "abc") {
				t.Error("the error echoes a secret")
			}
		})
	}
}

// A file is the whole stage: its last group is final though it does not
// say so, so the stage ends when its steps do instead of waiting out its
// idle timeout for a group that never comes.
func TestAStageFileIsFinal(t *testing.T) {
	spec, err := stagecli.ParseStageFile([]byte(`pool: p
groups:
  - steps: [{id: build, script: make}]
  - steps: [{id: test, script: make test}]
`))
	if err != nil {
		t.Fatal(err)
	}
	if spec.Groups[0].Final || !spec.Groups[1].Final || !spec.Closed() {
		t.Errorf("groups %+v", spec.Groups)
	}
}

// The worked example of docs/stage-file.md is a stage file that parses.
func TestTheDocumentedExampleParses(t *testing.T) {
	doc, err := os.ReadFile("../../docs/stage-file.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "```yaml\n")
	example, _, closed := strings.Cut(rest, "```")
	if !ok || !closed {
		t.Fatal("no yaml block in docs/stage-file.md")
	}
	spec, err := stagecli.ParseStageFile([]byte(example))
	if err != nil {
		t.Fatalf("the documented example:\n%v", err)
	}
	if len(spec.Groups) != 3 || !spec.Groups[2].Final || !spec.Groups[1].Steps[0].Background || len(spec.Files) != 1 {
		t.Errorf("spec %+v", spec)
	}
}
