package harnessrunner

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"maps"
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

// clientFixtures are the bodies the delegate sends, by the wire type each
// decodes into.
var clientFixtures = map[string]any{
	"client/setup.json": &SetupRequest{}, "client/step_run.json": &StepRequest{}, "client/step_container.json": &StepRequest{},
	"client/step_plugin.json": &StepRequest{}, "client/step_runtest.json": &StepRequest{}, "client/destroy.json": &DestroyRequest{},
	"client/step_background.json": &StepRequest{}, "client/service.json": &StepRequest{},
}

// fixtureFill fills every mark the client fixtures have.
var fixtureFill = map[string]string{
	"pool": "linux", "secret": testSecret, "log_url": "http://127.0.0.1:1", "log_token": "tok", "ip": "127.0.0.1",
	"step": "build", "script": "TAG=v1.2; echo built", "log_key": "key", "image": "busybox", "args": "discover",
	"pre": "true", "post": "true", "tool": "unittest", "port": "5432",
}

// decodeFixture decodes a client fixture as the runner does; it fails the
// test on a field the wire types do not declare.
func decodeFixture(t testing.TB, name string, fill map[string]string, v any) {
	t.Helper()
	ignored, err := agentapi.DecodeLenient(fixture(t, name, fill), v)
	if err != nil {
		t.Fatal(err)
	}
	if len(ignored) > 0 {
		t.Fatalf("%s: the wire types do not declare %v", name, ignored)
	}
}

func withFill(changes map[string]string) map[string]string {
	fill := maps.Clone(fixtureFill)
	maps.Copy(fill, changes)
	return fill
}

func setupFixture(t testing.TB) *SetupRequest {
	t.Helper()
	var r SetupRequest
	decodeFixture(t, "client/setup.json", fixtureFill, &r)
	return &r
}

func stepFixture(t testing.TB, name string, fill map[string]string) *StepRequest {
	t.Helper()
	var r StepRequest
	decodeFixture(t, name, withFill(fill), &r)
	return &r
}

// Every field the delegate's beans declare is declared here: mapped, or
// ignored for a reason wire.go gives.
func TestClientFixturesDeclareEveryField(t *testing.T) {
	for name, v := range clientFixtures {
		t.Run(name, func(t *testing.T) { decodeFixture(t, name, fixtureFill, v) })
	}
}

func TestSetupMapsToAStage(t *testing.T) {
	spec, st, err := toSpec(setupFixture(t), []string{"linux"})
	if err != nil {
		t.Fatal(err)
	}
	if spec.ID != "pZs1Hw3tTc2Qx9Lk0aB7_w" || spec.Pool != "linux" || spec.TimeoutSeconds != 0 {
		t.Errorf("spec %+v", spec)
	}
	// The env entry holding the secret is sealed with the secrets; the rest
	// stays plain, and the secret itself is masked even where no entry holds
	// it whole.
	if spec.Env["DRONE_NETRC_USERNAME"] != "robot" || spec.Env["DRONE_NETRC_PASSWORD"] != "" || spec.Secrets["DRONE_NETRC_PASSWORD"] != testSecret {
		t.Errorf("env %v, secrets %v", spec.Env, spec.Secrets)
	}
	// The harness volume is the workspace whatever its place; addon is a
	// folder of the stage.
	if st.workspace != "/harness" || st.workspaceVolume != "harness" || st.volumes["addon"] != "/addon" || st.logs == nil || st.logs.cfg.Token != "tok" {
		t.Errorf("kept %+v", st)
	}
	if err := spec.Validate([]string{"linux"}); err != nil {
		t.Errorf("Slipway refuses the mapped spec: %v", err)
	}
}

func TestSetupFallsBackToAKnownPool(t *testing.T) {
	r := setupFixture(t)
	r.FallbackPoolIDs = []string{"linux-arm64-fallback"}
	spec, _, err := toSpec(r, []string{"linux-arm64-fallback"})
	if err != nil || spec.Pool != "linux-arm64-fallback" {
		t.Fatalf("%v %+v", err, spec)
	}
}

// Fields newer runners know that would change what runs are refused by
// path; the client's tty and infra_type are not among them.
func TestRefusesWhatDoesNotMapByPath(t *testing.T) {
	var m map[string]any
	_ = json.Unmarshal(fixture(t, "client/setup.json", fixtureFill), &m)
	m["resource_class"] = "large"
	m["gitspace_agent_config"] = map[string]any{"secret": "x"}
	m["vm_image_config"] = map[string]any{"image_name": "ubuntu"}
	setup := m["setup_request"].(map[string]any)
	setup["tty"] = true
	setup["mtls_config"] = map[string]any{"client_cert": "%not base64%"}
	setup["volumes"] = []any{map[string]any{"temp": map[string]any{"id": "cache"}}}
	setup["files"] = []any{map[string]any{"path": "/etc/passwd", "data": "x"}, map[string]any{"path": "d", "is_dir": true}}
	body, _ := json.Marshal(m)
	var in SetupRequest
	if _, err := agentapi.DecodeLenient(body, &in); err != nil {
		t.Fatal(err)
	}
	_, _, err := toSpec(&in, []string{"linux"})
	if err == nil {
		t.Fatal("refused nothing")
	}
	for _, want := range []string{"resource_class:", "gitspace_agent_config:", "vm_image_config:",
		"setup_request.volumes[0].temp:", `setup_request.files[0].path "/etc/passwd": outside the stage's workspace`, "setup_request.files[1].is_dir:", "setup_request.mtls_config.client_cert: illegal base64"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "tty") || strings.Contains(err.Error(), "infra_type") {
		t.Errorf("refused the client's own fields:\n%v", err)
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
	r := stepFixture(t, "client/step_run.json", nil)
	step, err := toStep(&r.Step, st)
	if err != nil {
		t.Fatal(err)
	}
	if step.ID != "build" || step.WorkDir != "" || step.TimeoutSeconds != 600 || step.EnvFileVar != "DRONE_ENV" || len(step.Volumes) != 0 {
		t.Errorf("step %+v", step)
	}
	if step.Env["GREETING"] != "hello" || step.Secrets["TOKEN"] != testSecret || step.Env["TOKEN"] != "" {
		t.Errorf("env %v secrets %v", step.Env, step.Secrets)
	}
	// The output IMAGE_TAG is read from the shell variable TAG.
	if len(step.Command) != 3 || step.Command[0] != "bash" || !strings.HasPrefix(step.Command[2], "set -e; TAG=v1.2; echo built\n") ||
		!strings.Contains(step.Command[2], `IMAGE_TAG "${TAG-}"`) || !slices.Equal(step.Outputs, []string{"IMAGE_TAG", "DEPLOY_TOKEN"}) ||
		!slices.Equal(step.SecretOutputs, []string{"DEPLOY_TOKEN"}) || !bytes.Equal(step.OutputKey, st.outputKey.PublicKey().Bytes()) {
		t.Errorf("command %q outputs %v", step.Command, step.Outputs)
	}
}

// The output epilogue, run by a real shell: the outputs file it writes is
// what the agent parses, and the script's exit status survives it.
func TestOutputEpilogueInAShell(t *testing.T) {
	out := filepath.Join(t.TempDir(), "outputs")
	script := "A='one line'\nB=$'two\\nlines'\nfalse" + outputEpilogue([]output{{Key: "A", From: "A"}, {Key: "TWO", From: "B"}, {Key: "UNSET", From: "UNSET"}})
	cmd := exec.Command("bash", "-c", script)
	cmd.Env = append(os.Environ(), "SLIPWAY_OUTPUT="+out)
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("exit: %v, want the script's status 1", err)
	}
	data, _ := os.ReadFile(out)
	want := "A<<SLIPWAY_EOF_A\none line\nSLIPWAY_EOF_A\nTWO<<SLIPWAY_EOF_TWO\ntwo\nlines\nSLIPWAY_EOF_TWO\nUNSET<<SLIPWAY_EOF_UNSET\n\nSLIPWAY_EOF_UNSET\n"
	if string(data) != want {
		t.Errorf("outputs file:\n%s\nwant:\n%s", data, want)
	}
}

func TestSecretInACommandIsPassedSealed(t *testing.T) {
	_, st, _ := toSpec(setupFixture(t), []string{"linux"})
	r := stepFixture(t, "client/step_run.json", map[string]string{"script": "curl -H 'Authorization: " + testSecret + "' https://h/"})
	r.Step.OutputVars, r.Step.Outputs = nil, nil
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
	r := stepFixture(t, "client/step_container.json", nil)
	r.Step.Kind = "RunTestsV2"
	r.Step.WorkingDir = "/opt/elsewhere"
	r.Step.Volumes = append(r.Step.Volumes, VolumeMount{Name: "docker", Path: "/var/run/docker.sock"})
	r.Step.Network = "bridge"
	r.Step.Detach = true
	r.Step.Outputs = []OutputV2{{Key: "K", Value: "V", Type: "NUMBER"}, {Key: "bad-name", Value: "V"}}
	r.Step.Pull = "Sometimes"
	r.Step.Auth = ImageAuth{Address: "registry.example", Username: "robot", Password: testSecret}
	r.Step.PortBindings = map[string]string{"5432": "5432", "8080": "80"}
	_, err := toStep(&r.Step, st)
	if err == nil {
		t.Fatal("refused nothing")
	}
	for _, want := range []string{`start_step_request.kind "RunTestsV2"`, `start_step_request.working_dir "/opt/elsewhere"`,
		"start_step_request.volumes[2] (docker at /var/run/docker.sock): not a volume the setup made (addon, harness)",
		`start_step_request.network "bridge"`, `start_step_request.outputs[0] (K): type "NUMBER"`,
		"start_step_request.outputs[1] (bad-name from V): want variable names", `start_step_request.pull "Sometimes"`,
		"start_step_request.port_bindings[8080] = 80"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), testSecret) || strings.Contains(err.Error(), "5432") || strings.Contains(err.Error(), "auth") {
		t.Errorf("the refusal names the password or a binding that keeps its port:\n%v", err)
	}
}

func TestContainerStepMountsBothVolumes(t *testing.T) {
	_, st, _ := toSpec(setupFixture(t), []string{"linux"})
	r := stepFixture(t, "client/step_container.json", map[string]string{"script": "make"})
	r.Step.WorkingDir = "/harness/src"
	r.Step.Privileged = true
	step, err := toStep(&r.Step, st)
	if err != nil {
		t.Fatal(err)
	}
	if step.WorkspaceMount != "/harness" || step.WorkDir != "src" || !slices.Equal(step.Reports, []string{"reports/*.xml"}) || !step.Privileged ||
		!slices.Equal(step.Volumes, []agentapi.Volume{{Name: "addon", Path: "/addon"}}) {
		t.Errorf("step %+v", step.Step)
	}
	r.Step.Volumes = append(r.Step.Volumes, VolumeMount{Name: "harness", Path: "/workspace"})
	if _, err := toStep(&r.Step, st); err == nil || !strings.Contains(err.Error(), "mounted at /harness already") {
		t.Errorf("two mount paths: %v", err)
	}
}

// A plugin step runs its image's own entrypoint; an anonymous registry
// login (no user, no password) changes nothing, a login goes to the pull as
// a step secret.
func TestPluginStep(t *testing.T) {
	_, st, _ := toSpec(setupFixture(t), []string{"linux"})
	r := stepFixture(t, "client/step_plugin.json", nil)
	step, err := toStep(&r.Step, st)
	if err != nil {
		t.Fatal(err)
	}
	if len(step.Command) != 0 || step.Image != "busybox" || step.WorkspaceMount != "/harness" || step.Env["PLUGIN_DEPTH"] != "50" || step.PullSecret != "" {
		t.Errorf("step %+v", step.Step)
	}
	r.Step.Auth.Username, r.Step.Auth.Password = "robot", testSecret
	r.Step.Secrets = []string{testSecret}
	if step, err = toStep(&r.Step, st); err != nil {
		t.Fatal(err)
	}
	if step.PullSecret != loginVar || step.Secrets[loginVar] != `{"username":"robot","password":"`+testSecret+`","serveraddress":"https://index.docker.io/v1/"}` {
		t.Errorf("login %q in %v", step.PullSecret, step.Secrets)
	}
	if err := step.Validate(); err != nil {
		t.Errorf("the agent refuses the step: %v", err)
	}
}

func TestRunTestScript(t *testing.T) {
	tests := []struct{ tool, args, want string }{
		{"Maven", "test -B", "mvn test -B"},
		{"gradle", "test", "if [ -x ./gradlew ]; then ./gradlew test; else gradle test; fi"},
		{"bazel", "test", "bazel test //..."},
		{"sbt", "", "sbt  'test'"},
		{"pytest", "-q", "python3 -m pytest -q"},
		{"unittest", "discover", "python3 -m unittest discover"},
		{"rspec", "", "bundle exec rspec"},
		{"dotnet", "test x.sln", "dotnet test x.sln"},
		{"nunitconsole", "nunit3-console a.dll", "nunit3-console a.dll"},
	}
	for _, tt := range tests {
		got, err := runTestScript(&RunTestConfig{BuildTool: tt.tool, Args: tt.args, PreCommand: "pre", PostCommand: "post"})
		if err != nil || got != "pre\n"+tt.want+"\npost" {
			t.Errorf("%s: %q %v", tt.tool, got, err)
		}
	}
	if _, err := runTestScript(&RunTestConfig{BuildTool: "ant"}); err == nil || !strings.Contains(err.Error(), `build_tool "ant"`) {
		t.Errorf("ant: %v", err)
	}
	_, st, _ := toSpec(setupFixture(t), []string{"linux"})
	step, err := toStep(&stepFixture(t, "client/step_runtest.json", nil).Step, st)
	if err != nil || !slices.Equal(step.Command, []string{"sh", "-c", "true\npython3 -m unittest discover\ntrue"}) || !slices.Equal(step.Reports, []string{"reports/*.xml"}) {
		t.Errorf("%q %v", step.Command, err)
	}
}

// The delegate reads an answer with error set as a failed step, so error is
// set exactly when the step did not succeed, in lite-engine's words.
func TestPollResponse(t *testing.T) {
	three, zero := 3, 0
	r := &StartStep{Timeout: 5, Outputs: []OutputV2{{Key: "IMAGE_TAG", Value: "TAG", Type: "STRING"}}}
	tests := []struct {
		name      string
		status    stage.StepStatus
		wantError string
	}{
		{"succeeded", stage.StepStatus{State: string(agentapi.StepSucceeded), ExitCode: &zero, Outputs: map[string]string{"IMAGE_TAG": "v1"}}, ""},
		{"failed", stage.StepStatus{State: string(agentapi.StepFailed), ExitCode: &three, Outputs: map[string]string{"IMAGE_TAG": "v1"}}, "exit status 3"},
		{"oom", stage.StepStatus{State: string(agentapi.StepFailed), ExitCode: &three, OOMKilled: true}, "oom killed"},
		{"timed out", stage.StepStatus{State: string(agentapi.StepTimedOut)}, "step timed out after 5s"},
		{"error", stage.StepStatus{State: string(agentapi.StepError), Error: "no such image"}, "step error: no such image"},
	}
	for _, tt := range tests {
		got := toPoll(&tt.status, r, "st", nil)
		success, outputs := delegateReads(got)
		if !got.Exited || got.Error != tt.wantError || success != (tt.wantError == "") {
			t.Errorf("%s: %+v", tt.name, got)
		}
		if success && outputs["IMAGE_TAG"] != "v1" {
			t.Errorf("%s: the delegate reads the outputs %v", tt.name, outputs)
		}
	}
}

// delegateReads is how the delegate and the CI manager read a step's answer
// (StepExecutionHelper.callRunnerForStepExecution, then
// CommonAbstractStepExecutable.getOutputVariables): success when error is
// empty; outputs from outputV2 when it has any, else from outputs.
func delegateReads(p *PollStepResponse) (success bool, outputs map[string]string) {
	if p.Error != "" {
		return false, nil
	}
	if len(p.OutputV2) == 0 {
		return true, p.Outputs
	}
	outputs = map[string]string{}
	for _, o := range p.OutputV2 {
		outputs[o.Key] = o.Value
	}
	return true, outputs
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
