package agentapi

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

func TestDecodeStepRejectsBadInput(t *testing.T) {
	tests := []struct {
		name, body string
		want       []string // every problem must be reported
	}{
		{name: "unknown field", body: `{"command":["true"],"comand":1}`, want: []string{`unknown field "comand"`}},
		{name: "not json", body: `{`, want: []string{"decode body"}},
		{name: "trailing data", body: `{"command":["true"]} {}`, want: []string{"trailing data"}},
		{name: "empty step", body: `{}`, want: []string{"empty step"}},
		{name: "empty argv0", body: `{"command":[""]}`, want: []string{"command[0] is empty"}},
		{name: "both command and script", body: `{"command":["a"],"script":"b"}`, want: []string{"not both"}},
		{name: "negative timeout", body: `{"script":"x","timeout_seconds":-1}`, want: []string{"timeout_seconds -1"}},
		{name: "absurd timeout", body: `{"script":"x","timeout_seconds":99999999999}`, want: []string{"timeout_seconds 99999999999"}},
		{name: "work dir escapes", body: `{"script":"x","work_dir":"../../etc"}`, want: []string{"leaves the stage work dir"}},
		{name: "absolute work dir", body: `{"script":"x","work_dir":"/etc"}`, want: []string{"must be relative"}},
		{name: "windows absolute work dir", body: `{"script":"x","work_dir":"C:\\Windows"}`, want: []string{"must be relative"}},
		{name: "bad shell", body: `{"script":"x","shell":"zsh"}`, want: []string{`shell "zsh"`}},
		{name: "bad env name", body: `{"script":"x","env":{"A-B":"1"}}`, want: []string{`name "A-B"`}},
		{name: "nul in env", body: `{"script":"x","env":{"A":"a\u0000b"}}`, want: []string{"NUL"}},
		{name: "bad user", body: `{"script":"x","user":"root"}`, want: []string{`user "root"`}},
		{name: "pull without image", body: `{"script":"x","pull":"never"}`, want: []string{"give image"}},
		{name: "memory without image", body: `{"script":"x","memory_bytes":100000000}`, want: []string{"give image"}},
		{name: "memory too small", body: `{"image":"x","memory_bytes":1024}`, want: []string{"memory_bytes 1024"}},
		{name: "workspace mount without image", body: `{"script":"x","workspace_mount":"/w"}`, want: []string{"give image"}},
		{name: "workspace mount relative", body: `{"image":"x","workspace_mount":"w"}`, want: []string{`workspace_mount "w"`}},
		{name: "workspace mount root", body: `{"image":"x","workspace_mount":"/"}`, want: []string{`workspace_mount "/"`}},
		{name: "workspace mount unclean", body: `{"image":"x","workspace_mount":"/a/../b"}`, want: []string{`workspace_mount "/a/../b"`}},
		{name: "workspace mount with a colon", body: `{"image":"x","workspace_mount":"/a:ro"}`, want: []string{`workspace_mount "/a:ro"`}},
		{name: "volumes without image", body: `{"script":"x","volumes":[{"name":"addon","path":"/addon"}]}`, want: []string{"give image"}},
		{name: "privileged without image", body: `{"script":"x","privileged":true}`, want: []string{"give image"}},
		{
			name: "bad volumes",
			body: `{"image":"x","workspace_mount":"/harness","volumes":[{"name":"../up","path":"/a"},{"name":"b","path":"/harness"},{"name":"c","path":"rel"},{"name":"c","path":"/c"}]}`,
			want: []string{`volumes[0].name "../up"`, `volumes[1].path "/harness": something else`, `volumes[2].path "rel"`, `volumes[3].name "c": given twice`},
		},
		{name: "bad env file var", body: `{"script":"x","env_file_var":"DRONE-ENV"}`, want: []string{`env_file_var "DRONE-ENV"`}},
		{name: "bad network", body: `{"image":"x","network":"bridge"}`, want: []string{`network "bridge"`}},
		{name: "bad output name", body: `{"script":"x","outputs":["a b"]}`, want: []string{`output name "a b"`}},
		{
			name: "several problems at once", body: `{"script":"x","shell":"zsh","timeout_seconds":-5,"user":"bob"}`,
			want: []string{"shell", "timeout_seconds", "user"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeStep(strings.NewReader(tt.body))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestDecodeStepAcceptsGoodInput(t *testing.T) {
	for _, body := range []string{
		`{"command":["echo","hi"]}`,
		`{"script":"echo hi","shell":"bash","timeout_seconds":60,"work_dir":"a/b","user":"1000:1000","outputs":["X"]}`,
		`{"image":"busybox"}`,
		`{"image":"busybox","script":"echo","pull":"never","network":"none"}`,
	} {
		if _, err := DecodeStep(strings.NewReader(body)); err != nil {
			t.Errorf("%s: %v", body, err)
		}
	}
}

func TestDecodeStageRejectsBadInput(t *testing.T) {
	tests := []struct{ name, body, want string }{
		{name: "id with slash", body: `{"id":"a/b"}`, want: "stage id"},
		{name: "id with dots", body: `{"id":".."}`, want: "stage id"},
		{name: "id too long", body: `{"id":"` + strings.Repeat("a", 65) + `"}`, want: "stage id"},
		{name: "file escapes", body: `{"id":"s","files":[{"path":"../x","data":""}]}`, want: "files[0]"},
		{name: "file mode", body: `{"id":"s","files":[{"path":"x","mode":4095,"data":""}]}`, want: "beyond 0777"},
		{name: "bad base64", body: `{"id":"s","files":[{"path":"x","data":"!!"}]}`, want: "decode body"},
		{name: "bad secret name", body: `{"id":"s","secrets":{"1X":"v"}}`, want: `name "1X"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeStage(strings.NewReader(tt.body))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}

// The decoders see every request body: whatever arrives, they return a spec
// that validates or an error, and never panic.
func FuzzDecodeStep(f *testing.F) {
	f.Add([]byte(`{"command":["echo","hi"],"env":{"A":"1"},"timeout_seconds":5}`))
	f.Add([]byte(`{"script":"x","shell":"bash","work_dir":"a/../b","outputs":["X"]}`))
	f.Add([]byte(`{"image":"busybox","pull":"never"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		s, err := DecodeStep(bytes.NewReader(body))
		if err == nil {
			if verr := s.Validate(); verr != nil {
				t.Fatalf("decoded an invalid step: %v", verr)
			}
		}
	})
}

func FuzzDecodeStage(f *testing.F) {
	f.Add([]byte(`{"id":"s-1","env":{"A":"1"},"secrets":{"T":"v"},"files":[{"path":"a/b","mode":420,"data":"aGk="}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		s, err := DecodeStage(bytes.NewReader(body))
		if err == nil {
			if verr := s.Validate(); verr != nil {
				t.Fatalf("decoded an invalid stage: %v", verr)
			}
		}
	})
}

func TestSecretsHaveLimits(t *testing.T) {
	big := strings.Repeat("s", MaxSecretBytes+1)
	fits := strings.Repeat("s", MaxSecretBytes)
	st := Stage{ID: "s", Secrets: map[string]string{"BIG": big}}
	if err := st.Validate(); err == nil || !strings.Contains(err.Error(), "secrets: BIG: 32769 bytes, at most 32768") {
		t.Errorf("a secret over the limit: %v", err)
	}
	many := map[string]string{}
	for i := range 5 {
		many[fmt.Sprintf("S%d", i)] = fits
	}
	step := Step{Command: []string{"true"}, Secrets: many}
	if err := step.Validate(); err == nil || !strings.Contains(err.Error(), "secrets: 163840 bytes in all, at most 131072") {
		t.Errorf("secrets over the total: %v", err)
	}
	if n := DistinctSecretBytes(map[string]string{"A": "xy", "B": "xy"}, map[string]string{"C": "xy", "D": "z"}); n != 3 {
		t.Errorf("distinct secret bytes %d, want 3", n)
	}
}

// Every problem of a body at once, in the user's terms, none of them a 500
// later: keys matched exactly, base64 checked, paths bounded, files that
// collide, NUL bytes in arguments, uids beyond 32 bits.
func TestEveryProblemAtOnce(t *testing.T) {
	body := `{"id":"s","ENV":{},"secretz":{},"files":[` +
		`{"path":".","data":"eA=="},{"path":"d","data":"eA=="},{"path":"d/e","data":"eA=="},` +
		`{"path":"` + strings.Repeat("p", 5000) + `","data":"!!"},{"path":"x","data":"not base64"}]}`
	_, err := DecodeStage(strings.NewReader(body))
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{
		`unknown field "ENV" (keys are case-sensitive: "env")`, `unknown field "secretz"`,
		"files[3].data: not base64", "files[4].data: not base64",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %q:\n%v", want, err)
		}
	}
	// With the keys right, the rest of the stage's problems.
	body = `{"id":"s","files":[{"path":".","data":"eA=="},{"path":"d","data":"eA=="},{"path":"d/e","data":"eA=="},` +
		`{"path":"` + strings.Repeat("p", 5000) + `","data":"eA=="},{"path":"a/` + strings.Repeat("n", 300) + `","data":"eA=="}]}`
	_, err = DecodeStage(strings.NewReader(body))
	for _, want := range []string{
		`files[0]: path "." is the work dir itself`, `files[2]: "d/e" is under files[1] ("d"), which is a file`,
		"files[3]: path", "is 5000 bytes, at most 4095", "files[4]: path", "has a name of 300 bytes",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %q:\n%v", want, err)
		}
	}
	if err != nil && len(err.Error()) > 2000 {
		t.Errorf("the error is %d bytes: values are not cut", len(err.Error()))
	}
	_, err = DecodeStep(strings.NewReader(`{"command":["echo","a\u0000b"],"user":"4294967296","COMMAND":["x"]}`))
	if err == nil || !strings.Contains(err.Error(), `unknown field "COMMAND"`) {
		t.Errorf("COMMAND: %v", err)
	}
	_, err = DecodeStep(strings.NewReader(`{"command":["echo","a\u0000b"],"user":"4294967296"}`))
	for _, want := range []string{"command[1] contains a NUL byte", `user "4294967296": want uid or uid:gid, each 0 to 4294967294`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %q:\n%v", want, err)
		}
	}
	if _, err := DecodeStep(strings.NewReader(`{"command":["true"],"user":"4294967294:0"}`)); err != nil {
		t.Errorf("the largest uid: %v", err)
	}
}

func TestTruncate(t *testing.T) {
	for _, tt := range []struct {
		in   string
		n    int
		want string
	}{
		{"short", 10, "short"}, {"exactly", 7, "exactly"}, {"abcdef", 3, "abc…"},
		{"aé", 2, "a…"}, // not half of é
	} {
		if got := Truncate(tt.in, tt.n); got != tt.want {
			t.Errorf("Truncate(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
}
