package harness

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/internal/stage"
)

const testSecret = "s3cr3t-Tok3n-8f2a"

// fixture is a testdata body with its {{name}} marks filled in (JSON-escaped).
func fixture(t testing.TB, name string, fill map[string]string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	for k, v := range fill {
		quoted, _ := json.Marshal(v)
		s = strings.ReplaceAll(s, "{{"+k+"}}", string(quoted[1:len(quoted)-1]))
	}
	if i := strings.Index(s, "{{"); i >= 0 {
		t.Fatalf("%s: unfilled mark at %q", name, s[i:min(len(s), i+20)])
	}
	return []byte(s)
}

func setupFixture(t testing.TB) *SetupRequest {
	t.Helper()
	var r SetupRequest
	body := fixture(t, "setup.json", map[string]string{"pool": "linux", "secret": testSecret, "log_url": "http://127.0.0.1:1", "log_token": "tok"})
	if err := agentapi.DecodeStrict(bytes.NewReader(body), &r); err != nil {
		t.Fatal(err)
	}
	return &r
}

func stepFixture(t testing.TB, step, script string) *StepRequest {
	t.Helper()
	var r StepRequest
	body := fixture(t, "step.json", map[string]string{"pool": "linux", "secret": testSecret, "instance": "i-1", "step": step, "script": script})
	if err := agentapi.DecodeStrict(bytes.NewReader(body), &r); err != nil {
		t.Fatal(err)
	}
	return &r
}

func TestSetupMapsToAStage(t *testing.T) {
	spec, st, err := toSpec(setupFixture(t), []string{"linux"})
	if err != nil {
		t.Fatal(err)
	}
	if spec.ID != "pZs1Hw3tTc2Qx9Lk0aB7_w" || spec.Pool != "linux" || spec.TimeoutSeconds != 3600 {
		t.Errorf("spec %+v", spec)
	}
	// The env entry holding the secret is sealed with the secrets; the rest
	// stays plain, and the secret itself is masked even where no entry holds
	// it whole.
	if spec.Env["GREETING"] != "hello" || spec.Env["DOCKER_AUTH"] != "" || spec.Secrets["DOCKER_AUTH"] != "robot:"+testSecret {
		t.Errorf("env %v, secrets %v", spec.Env, spec.Secrets)
	}
	if spec.Secrets[maskPrefix+"0"] != testSecret {
		t.Errorf("the bare secret is not among the masked values: %v", spec.Secrets)
	}
	if len(spec.Files) != 1 || spec.Files[0].Path != ".netrc" || spec.Files[0].Mode != 0o600 {
		t.Errorf("files %+v", spec.Files)
	}
	if !slices.Equal(st.workspace, []string{"/tmp/harness"}) || st.logs == nil || st.logs.cfg.Token != "tok" || st.network != "drone" {
		t.Errorf("kept %+v", st)
	}
	if err := spec.Validate([]string{"linux"}); err != nil {
		t.Errorf("Slipway refuses the mapped spec: %v", err)
	}
}

func TestSetupFallsBackToAKnownPool(t *testing.T) {
	spec, _, err := toSpec(setupFixture(t), []string{"linux-arm64-fallback"})
	if err != nil || spec.Pool != "linux-arm64-fallback" {
		t.Fatalf("%v %+v", err, spec)
	}
}

func TestRefusesWhatDoesNotMapByPath(t *testing.T) {
	r := setupFixture(t)
	body, _ := json.Marshal(r)
	var m map[string]any
	_ = json.Unmarshal(body, &m)
	m["resource_class"] = "large"
	m["gitspace_agent_config"] = map[string]any{"secret": "x"}
	m["vm_image_config"] = map[string]any{"image_name": "ubuntu"}
	setup := m["setup_request"].(map[string]any)
	setup["tty"] = true
	setup["mtls_config"] = map[string]any{"client_cert": "%not base64%"}
	setup["volumes"] = []any{map[string]any{"temp": map[string]any{"id": "cache"}}}
	setup["files"] = []any{map[string]any{"path": "/etc/passwd", "data": "x"}, map[string]any{"path": "d", "is_dir": true}}
	body, _ = json.Marshal(m)
	var in SetupRequest
	if err := agentapi.DecodeStrict(bytes.NewReader(body), &in); err != nil {
		t.Fatal(err)
	}
	_, _, err := toSpec(&in, []string{"linux"})
	if err == nil {
		t.Fatal("refused nothing")
	}
	for _, want := range []string{"resource_class:", "gitspace_agent_config:", "vm_image_config:", "setup_request.tty:",
		"setup_request.volumes[0].temp:", `setup_request.files[0].path "/etc/passwd": outside the stage's workspace`, "setup_request.files[1].is_dir:", "setup_request.mtls_config.client_cert: illegal base64"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

func TestUnknownFieldsAreRefused(t *testing.T) {
	var r SetupRequest
	err := agentapi.DecodeStrict(strings.NewReader(`{"id":"a","pool_id":"p","setup_request":{"envs":{},"gpu":"a100"}}`), &r)
	if err == nil || !strings.Contains(err.Error(), `unknown field "gpu"`) {
		t.Fatalf("got %v", err)
	}
}

func TestZeroJSON(t *testing.T) {
	for raw, zero := range map[string]bool{
		``: true, `null`: true, `false`: true, `0`: true, `""`: true, `[]`: true, `{}`: true, `{"a":{"b":[]}}`: true,
		`true`: false, `1`: false, `"x"`: false, `[0]`: false, `{"a":{"b":"c"}}`: false,
	} {
		if zeroJSON([]byte(raw)) != zero {
			t.Errorf("zeroJSON(%s) = %v", raw, !zero)
		}
	}
}

func TestStepMapsToAStep(t *testing.T) {
	_, st, _ := toSpec(setupFixture(t), []string{"linux"})
	r := stepFixture(t, "build", "VERSION=1.2.3\necho built")
	step, err := toStep(&r.Step, st)
	if err != nil {
		t.Fatal(err)
	}
	if step.ID != "build" || step.WorkDir != "" || step.TimeoutSeconds != 600 || !slices.Equal(step.Reports, []string{"reports/*.xml"}) {
		t.Errorf("step %+v", step)
	}
	if step.Env["HARNESS_STEP"] != "build" || step.Secrets["TOKEN"] != testSecret || step.Env["TOKEN"] != "" {
		t.Errorf("env %v secrets %v", step.Env, step.Secrets)
	}
	if len(step.Command) != 3 || step.Command[0] != "bash" || !strings.HasPrefix(step.Command[2], "VERSION=1.2.3\necho built\n") ||
		!slices.Equal(step.Outputs, []string{"VERSION"}) {
		t.Errorf("command %q outputs %v", step.Command, step.Outputs)
	}
}

// The output epilogue, run by a real shell: the outputs file it writes is
// what the agent parses, and the script's exit status survives it.
func TestOutputEpilogueInAShell(t *testing.T) {
	out := filepath.Join(t.TempDir(), "outputs")
	script := "A='one line'\nB=$'two\\nlines'\nfalse" + outputEpilogue([]string{"A", "B", "UNSET"})
	cmd := exec.Command("bash", "-c", script)
	cmd.Env = append(os.Environ(), "SLIPWAY_OUTPUT="+out)
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("exit: %v, want the script's status 1", err)
	}
	data, _ := os.ReadFile(out)
	want := "A<<SLIPWAY_EOF_A\none line\nSLIPWAY_EOF_A\nB<<SLIPWAY_EOF_B\ntwo\nlines\nSLIPWAY_EOF_B\nUNSET<<SLIPWAY_EOF_UNSET\n\nSLIPWAY_EOF_UNSET\n"
	if string(data) != want {
		t.Errorf("outputs file:\n%s\nwant:\n%s", data, want)
	}
}

func TestSecretInACommandIsPassedSealed(t *testing.T) {
	_, st, _ := toSpec(setupFixture(t), []string{"linux"})
	r := stepFixture(t, "push", "curl -H 'Authorization: "+testSecret+"' https://h/")
	r.Step.OutputVars = nil
	step, err := toStep(&r.Step, st)
	if err != nil {
		t.Fatal(err)
	}
	for _, arg := range step.Command {
		if strings.Contains(arg, testSecret) {
			t.Fatalf("the secret is in the command: %q", step.Command)
		}
	}
	script, _ := base64.StdEncoding.DecodeString(step.Secrets[scriptVar])
	if !strings.Contains(string(script), testSecret) {
		t.Errorf("the sealed script is %q", script)
	}
	// The wrapper runs the script as written.
	cmd := exec.Command("bash", "-c", step.Command[2])
	cmd.Env = []string{scriptVar + "=" + base64.StdEncoding.EncodeToString([]byte(`printf '%s' "ran $0"`))}
	if got, err := cmd.Output(); err != nil || string(got) != "ran bash" {
		t.Errorf("wrapper: %q %v", got, err)
	}

	r.Step.Run.Entrypoint = []string{"powershell", "-Command"}
	if _, err := toStep(&r.Step, st); err == nil || !strings.Contains(err.Error(), "start_step_request.run.commands: holds a secret value") {
		t.Errorf("powershell with a secret in the script: %v", err)
	}
}

func TestStepRefusals(t *testing.T) {
	_, st, _ := toSpec(setupFixture(t), []string{"linux"})
	r := stepFixture(t, "x", "true")
	r.Step.Kind = "RunTestsV2"
	r.Step.WorkingDir = "/opt/elsewhere"
	r.Step.Image = "busybox"
	r.Step.Volumes = []VolumeMount{{Name: "docker", Path: "/var/run/docker.sock"}}
	r.Step.Network = "bridge"
	r.Step.Detach = Unsupported(`true`)
	r.Step.Privileged = Unsupported(`true`)
	r.Step.Outputs = []OutputV2{{Key: "K", Type: "SECRET"}}
	r.Step.Pull = "Sometimes"
	_, err := toStep(&r.Step, st)
	if err == nil {
		t.Fatal("refused nothing")
	}
	for _, want := range []string{`start_step_request.kind "RunTestsV2"`, `start_step_request.working_dir "/opt/elsewhere"`,
		"start_step_request.volumes[0] (docker at /var/run/docker.sock): only the setup's host-path volumes", `start_step_request.network "bridge"`, "start_step_request.detach:",
		"start_step_request.privileged:", "start_step_request.outputs[0] (K)", `start_step_request.pull "Sometimes"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

func TestContainerStepMountsTheWorkspace(t *testing.T) {
	_, st, _ := toSpec(setupFixture(t), []string{"linux"})
	r := stepFixture(t, "c", "make")
	r.Step.Image, r.Step.WorkingDir = "golang", "/harness/src"
	r.Step.Volumes = []VolumeMount{{Name: "harness", Path: "/harness"}}
	r.Step.TestReport.Junit.Paths = []string{"/harness/out/*.xml", "/tmp/harness/more/*.xml"}
	step, err := toStep(&r.Step, st)
	if err != nil {
		t.Fatal(err)
	}
	if step.WorkspaceMount != "/harness" || step.WorkDir != "src" || !slices.Equal(step.Reports, []string{"out/*.xml", "more/*.xml"}) {
		t.Errorf("step %+v", step.Step)
	}
	r.Step.Volumes = append(r.Step.Volumes, VolumeMount{Name: "harness", Path: "/workspace"})
	if _, err := toStep(&r.Step, st); err == nil || !strings.Contains(err.Error(), "mounted at /harness already") {
		t.Errorf("two mount paths: %v", err)
	}
}

func TestPollResponse(t *testing.T) {
	three := 3
	r := &StartStep{Timeout: 5, Outputs: []OutputV2{{Key: "V"}}}
	got := toPoll(&stage.StepStatus{State: string(agentapi.StepFailed), ExitCode: &three, Outputs: map[string]string{"V": "1"}}, r)
	if !got.Exited || got.ExitCode != 3 || got.Error != "" || got.Outputs["V"] != "1" || len(got.OutputV2) != 1 || got.OutputV2[0].Value != "1" {
		t.Errorf("failed: %+v", got)
	}
	got = toPoll(&stage.StepStatus{State: string(agentapi.StepTimedOut)}, r)
	if got.Error != "step timed out after 5s" {
		t.Errorf("timed out: %+v", got)
	}
}

func TestStageIDs(t *testing.T) {
	if stageID("pZs1Hw3tTc2Qx9Lk0aB7_w") != "pZs1Hw3tTc2Qx9Lk0aB7_w" {
		t.Error("a valid id changed")
	}
	long := strings.Repeat("x", 80)
	if id := stageID(long); id == long || agentapi.ValidateID("stage", id) != nil || id != stageID(long) {
		t.Errorf("stageID(80 x) = %q", id)
	}
}
