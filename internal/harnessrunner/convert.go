package harnessrunner

import (
	"cmp"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/internal/stage"
)

// maskPrefix names the environment entries that carry a secret only so the
// agent masks it: Harness sends secrets as bare values to mask, their uses
// already resolved into envs and commands.
const maskPrefix = "SLIPWAY_HARNESS_MASK_"

// scriptVar carries, base64-encoded and sealed as a step secret, a script
// that holds a secret value: Slipway keeps step commands in its records, so
// a command with a secret in it must not be one.
const scriptVar = "SLIPWAY_HARNESS_SCRIPT"

// stageOf is what setup leaves for the stage's steps: it lives in this
// process only (the log service token never reaches Slipway).
type stageOf struct {
	logs    *logService // nil without a log service
	mtls    MtlsConfig  // for a step that names its own log service
	created time.Time
	// workspace is the host path of the volume that is the stage's
	// workspace (the CI manager's "harness"), by name workspaceVolume.
	workspace, workspaceVolume string
	// volumes are the setup's host-path volumes, their paths by name: the
	// workspace, and folders of the stage for the rest (addon, shared paths).
	volumes    map[string]string
	network    string
	dockerSock bool
	// outputKey opens the stage's secret outputs, which the agent seals to
	// its public key: they cross Slipway's records as ciphertext only.
	outputKey *ecdh.PrivateKey

	// mu guards background: the logs of the stage's background steps,
	// followed until the stage is destroyed.
	mu         sync.Mutex
	background []*logFollower
}

// logServiceFor is where the step's log goes: the log service the step
// names, else the setup's (nil: none).
func (st *stageOf) logServiceFor(step *StartStep) (*logService, error) {
	if step.LogConfig.URL == "" {
		return st.logs, nil
	}
	mtls := step.MtlsConfig
	if mtls.ClientCert == "" && mtls.ClientCertKey == "" {
		mtls = st.mtls
	}
	return newLogService(step.LogConfig, mtls)
}

func (st *stageOf) addBackground(f *logFollower) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.background = append(st.background, f)
}

// endBackground ends the logs of the stage's background steps, after
// giving them drain to catch up.
func (st *stageOf) endBackground(ctx context.Context, drain time.Duration) error {
	st.mu.Lock()
	followers := st.background
	st.background = nil
	st.mu.Unlock()
	drained, cancel := context.WithTimeout(ctx, drain)
	defer cancel()
	var errs []error
	for _, f := range followers {
		// A background step's log is open until the stage ends: not news.
		if err := f.end(ctx, drained); err != nil && !errors.Is(err, errLogOpen) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// workspaceVolumeName is the volume the CI manager makes the workspace
// (ContainerExecutionConstants.STEP_VOLUME); /addon is "addon", a pipeline's
// shared paths "shared-N".
const workspaceVolumeName = "harness"

// stageID is Slipway's id for a Harness stage runtime id: the id itself when
// Slipway takes it, else a digest of it.
func stageID(runtimeID string) string { return slipwayID("h", runtimeID) }

func slipwayID(prefix, id string) string {
	if agentapi.ValidateID("stage", id) == nil {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return prefix + "-" + hex.EncodeToString(sum[:15])
}

// toSpec maps a setup request to a stage, or says every field it cannot map.
func toSpec(r *SetupRequest, pools []string) (*stage.Spec, *stageOf, error) {
	errs := refusals(unsupportedFields(r))
	if r.ID == "" {
		errs = append(errs, errors.New("id: the stage runtime id is required"))
	}
	if r.PoolID == "" {
		errs = append(errs, errors.New("pool_id: required"))
	}
	s := r.Setup
	st := &stageOf{mtls: s.MtlsConfig, network: s.Network.ID, dockerSock: s.MountDockerSocket != nil && *s.MountDockerSocket}
	var err error
	if st.outputKey, err = ecdh.X25519().GenerateKey(rand.Reader); err != nil {
		return nil, nil, fmt.Errorf("secret outputs' key: %w", err)
	}
	if s.LogConfig.URL != "" {
		if st.logs, err = newLogService(s.LogConfig, s.MtlsConfig); err != nil {
			errs = append(errs, fmt.Errorf("setup_request.%w", err))
		}
	}
	st.volumes = map[string]string{}
	for i, v := range s.Volumes {
		if v.HostPath == nil || v.HostPath.Path == "" {
			continue
		}
		name := cmp.Or(v.HostPath.Name, v.HostPath.ID)
		if _, twice := st.volumes[name]; twice {
			errs = append(errs, fmt.Errorf("setup_request.volumes[%d].host.name %q: given twice", i, name))
		}
		st.volumes[name] = v.HostPath.Path
		if st.workspace == "" || name == workspaceVolumeName {
			st.workspace, st.workspaceVolume = v.HostPath.Path, name
		}
	}
	env, secrets := splitSecrets(s.Envs, s.Secrets)
	spec := &stage.Spec{
		ID: stageID(r.ID), Pool: pickPool(append([]string{r.PoolID}, r.FallbackPoolIDs...), pools),
		Env: env, Secrets: secrets, TimeoutSeconds: s.Timeout,
		AcquireTimeoutSeconds: (r.ReservationTimeout + 999) / 1000,
	}
	for i, f := range s.Files {
		rel, err := relative(fmt.Sprintf("setup_request.files[%d].path", i), f.Path, st.workspace)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		spec.Files = append(spec.Files, agentapi.File{Path: rel, Mode: f.Mode, Data: []byte(f.Data)})
	}
	if err := errors.Join(errs...); err != nil {
		return nil, nil, err
	}
	return spec, st, nil
}

// pickPool is the first of the wanted pools the deployment has (the pool and
// then the fallbacks), or the first wanted one, for Slipway to refuse by name.
func pickPool(wanted, have []string) string {
	for _, p := range wanted {
		if slices.Contains(have, p) {
			return p
		}
	}
	return wanted[0]
}

// splitSecrets moves every env entry whose value holds a secret to secrets
// (sealed, masked); a secret no entry holds whole is added to be masked.
func splitSecrets(env map[string]string, values []string) (plain, secret map[string]string) {
	for name, v := range env {
		if holdsSecret(v, values) {
			if secret == nil {
				secret = map[string]string{}
			}
			secret[name] = v
			continue
		}
		if plain == nil {
			plain = map[string]string{}
		}
		plain[name] = v
	}
	n := 0
	for _, v := range values {
		if v == "" || containsValue(secret, v) {
			continue
		}
		if secret == nil {
			secret = map[string]string{}
		}
		secret[fmt.Sprintf("%s%d", maskPrefix, n)] = v
		n++
	}
	return plain, secret
}

func holdsSecret(s string, secrets []string) bool {
	return slices.ContainsFunc(secrets, func(v string) bool { return v != "" && strings.Contains(s, v) })
}

func containsValue(m map[string]string, v string) bool {
	for _, x := range m {
		if x == v {
			return true
		}
	}
	return false
}

// relative maps a path on the VM (or in a container) to one in Slipway's
// stage workspace: a relative path stays, a path under one of roots (where
// the workspace is) becomes relative to it.
func relative(field, p string, roots ...string) (string, error) {
	if p == "" {
		return "", nil
	}
	slashed := strings.ReplaceAll(p, `\`, "/")
	if !path.IsAbs(slashed) && !hasDrive(slashed) {
		return strings.TrimPrefix(path.Clean(slashed), "."), nil
	}
	for _, root := range roots {
		if root == "" {
			continue
		}
		root = strings.TrimSuffix(strings.ReplaceAll(root, `\`, "/"), "/")
		if strings.EqualFold(slashed, root) {
			return "", nil
		}
		if len(slashed) > len(root) && strings.EqualFold(slashed[:len(root)+1], root+"/") {
			return path.Clean(slashed[len(root)+1:]), nil
		}
	}
	var where []string
	for _, r := range roots {
		if r != "" && !slices.Contains(where, r) {
			where = append(where, r)
		}
	}
	return "", fmt.Errorf("%s %q: outside the stage's workspace (%s); Slipway runs steps in the workspace it makes for the stage",
		field, p, strings.Join(where, ", "))
}

func hasDrive(p string) bool { return len(p) >= 2 && p[1] == ':' }

// loginVar is the step secret that carries a registry login to the agent,
// which gives it to the image's pull and to no process.
const loginVar = "SLIPWAY_HARNESS_REGISTRY_LOGIN"

// envFileVar is the variable lite-engine names a step's env file by: what
// a step writes there is the env of the stage's later steps.
const envFileVar = "DRONE_ENV"

// toStep maps a step request to a one-step group of the stage.
func toStep(r *StartStep, st *stageOf) (stage.Step, error) {
	errs := refusals(prefixed("start_step_request.", unsupportedFields(r)))
	if r.ID == "" {
		errs = append(errs, errors.New("start_step_request.id: required"))
	}
	step := stage.Step{ID: slipwayID("s", r.ID)}
	step.Env, step.Secrets = splitSecrets(r.Envs, r.Secrets)
	step.EnvFileVar = envFileVar
	step.TimeoutSeconds = r.Timeout
	step.Image, step.User, step.MemoryBytes = r.Image, r.User, r.MemLimit
	// A Background step, or a service dependency: it runs on for the rest
	// of the stage.
	step.Background = r.Detach
	errs = append(errs, mapVolumes(r, st, &step)...)
	// Paths in the request are the VM's, or the container's where the
	// workspace is mounted into it.
	roots := []string{st.workspace, step.WorkspaceMount}
	for i, glob := range r.TestReport.Junit.Paths {
		rel, err := relative(fmt.Sprintf("start_step_request.test_report.junit.paths[%d]", i), glob, roots...)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		step.Reports = append(step.Reports, rel)
	}
	if r.TestReport.Kind != "" && r.TestReport.Kind != "Junit" {
		errs = append(errs, fmt.Errorf("start_step_request.test_report.kind %q: want Junit", r.TestReport.Kind))
	}
	var err error
	if step.WorkDir, err = relative("start_step_request.working_dir", r.WorkingDir, roots...); err != nil {
		errs = append(errs, err)
	}
	if step.Pull, err = pullPolicy(r.Pull); err != nil {
		errs = append(errs, err)
	}
	if r.Image != "" {
		errs = append(errs, containerOptions(r, st, &step)...)
	}

	entrypoint, commands := r.Run.Entrypoint, r.Run.Commands
	switch r.Kind {
	case "", "Run":
	case "RunTest":
		var script string
		if script, err = runTestScript(&r.RunTest); err != nil {
			errs = append(errs, err)
		}
		entrypoint, commands = r.RunTest.Entrypoint, []string{script}
		if len(entrypoint) == 0 {
			entrypoint = []string{"sh", "-c"}
		}
		if !posixShell(entrypoint) {
			errs = append(errs, fmt.Errorf("start_step_request.run_test.entrypoint %q: a Run Tests step's script needs a POSIX shell (sh or bash, -c)", entrypoint))
		}
	default:
		errs = append(errs, fmt.Errorf("start_step_request.kind %q: want Run or RunTest (RunTestsV2 needs Harness's Test Intelligence service)", r.Kind))
	}
	command := slices.Concat(entrypoint, commands)
	if len(command) == 0 && r.Image == "" {
		errs = append(errs, errors.New("start_step_request.run: a step on the VM needs an entrypoint or commands"))
	}

	outputs, oerrs := declaredOutputs(r)
	errs = append(errs, oerrs...)
	if len(outputs) > 0 {
		if !posixShell(entrypoint) || len(commands) == 0 {
			errs = append(errs, fmt.Errorf("start_step_request.outputs: outputs are read by a shell epilogue: want entrypoint [sh|bash, -c] and a command, got entrypoint %q", entrypoint))
		} else {
			command[len(entrypoint)] += outputEpilogue(outputs)
		}
		for _, o := range outputs {
			step.Outputs = append(step.Outputs, o.Key)
			if o.Type == OutputSecret {
				step.SecretOutputs = append(step.SecretOutputs, o.Key)
				step.OutputKey = st.outputKey.PublicKey().Bytes()
			}
		}
	}
	if slices.ContainsFunc(command, func(arg string) bool { return holdsSecret(arg, r.Secrets) }) {
		if !posixShell(entrypoint) || len(commands) != 1 {
			errs = append(errs, errors.New("start_step_request.run.commands: holds a secret value, which must not reach Slipway's records; that needs entrypoint [sh|bash, -c] and one command (the script is then passed sealed)"))
		} else {
			if step.Secrets == nil {
				step.Secrets = map[string]string{}
			}
			step.Secrets[scriptVar] = base64.StdEncoding.EncodeToString([]byte(command[len(command)-1]))
			command[len(command)-1] = `eval "$(printf '%s' "$` + scriptVar + `" | base64 -d)"`
		}
	}
	step.Command = command
	if err := errors.Join(errs...); err != nil {
		return stage.Step{}, err
	}
	return step, nil
}

// mapVolumes maps the step's volume mounts: the workspace volume is the
// stage's workspace, the others (addon, shared paths) folders of the stage
// by the same name. A step on the VM sees the workspace where Slipway made
// it, so its mounts change nothing.
func mapVolumes(r *StartStep, st *stageOf, step *stage.Step) []error {
	var errs []error
	for i, m := range r.Volumes {
		field := fmt.Sprintf("start_step_request.volumes[%d] (%s at %s)", i, m.Name, m.Path)
		_, known := st.volumes[m.Name]
		switch {
		case !known:
			errs = append(errs, fmt.Errorf("%s: not a volume the setup made (%s)", field, strings.Join(slices.Sorted(maps.Keys(st.volumes)), ", ")))
		case r.Image == "":
		case m.Name != st.workspaceVolume:
			step.Volumes = append(step.Volumes, agentapi.Volume{Name: m.Name, Path: m.Path})
		case step.WorkspaceMount != "" && step.WorkspaceMount != m.Path:
			errs = append(errs, fmt.Errorf("%s: the workspace is mounted at %s already; Slipway mounts it at one path in a container", field, step.WorkspaceMount))
		default:
			step.WorkspaceMount = m.Path
		}
	}
	return errs
}

// containerOptions maps what only a container step has.
func containerOptions(r *StartStep, st *stageOf, step *stage.Step) []error {
	var errs []error
	switch r.Network {
	case "", "host", "none", st.network:
		if r.Network == "none" {
			step.Network = "none"
		}
	default:
		errs = append(errs, fmt.Errorf("start_step_request.network %q: Slipway's containers use the VM's network (host) or none", r.Network))
	}
	if (r.MountDockerSocket != nil && *r.MountDockerSocket) || (r.MountDockerSocket == nil && st.dockerSock) {
		errs = append(errs, errors.New("start_step_request.mount_docker_socket: a container step cannot be given the VM's docker socket; run docker commands in a host step"))
	}
	step.Privileged = r.Privileged
	// A registry login is a step secret the agent hands to the pull only;
	// an anonymous one (no user, no password) is none.
	if r.Auth.Username != "" || r.Auth.Password != "" {
		login, _ := json.Marshal(struct {
			Username string `json:"username"`
			Password string `json:"password"`
			Server   string `json:"serveraddress,omitempty"`
		}{r.Auth.Username, r.Auth.Password, r.Auth.Address})
		if step.Secrets == nil {
			step.Secrets = map[string]string{}
		}
		step.Secrets[loginVar] = string(login)
		step.PullSecret = loginVar
	}
	// Containers share the VM's network: a port is reachable at its own
	// number, so only bindings that keep it can be honoured.
	for _, host := range slices.Sorted(maps.Keys(r.PortBindings)) {
		if inContainer := r.PortBindings[host]; inContainer != host {
			errs = append(errs, fmt.Errorf("start_step_request.port_bindings[%s] = %s: Slipway's containers use the VM's network, where a port keeps its number", host, inContainer))
		}
	}
	return errs
}

// output is an output the step declares: Key its name, From the shell
// variable its value is read from.
type output struct{ Key, From, Type string }

// declaredOutputs are the step's outputs: outputs (name, variable, type)
// where given, else output_vars (each read from its own name), as
// lite-engine reads them.
func declaredOutputs(r *StartStep) ([]output, []error) {
	var outs []output
	var errs []error
	for i, o := range r.Outputs {
		out := output{Key: o.Key, From: cmp.Or(o.Value, o.Key), Type: cmp.Or(o.Type, OutputString)}
		field := fmt.Sprintf("start_step_request.outputs[%d]", i)
		switch {
		case !agentapi.IsVarName(out.Key) || !agentapi.IsVarName(out.From):
			errs = append(errs, fmt.Errorf("%s (%s from %s): want variable names", field, o.Key, o.Value))
		case out.Type != OutputString && out.Type != OutputSecret:
			errs = append(errs, fmt.Errorf("%s (%s): type %q, want STRING or SECRET", field, o.Key, o.Type))
		default:
			outs = append(outs, out)
		}
	}
	if len(r.Outputs) > 0 {
		return outs, errs
	}
	for i, name := range r.OutputVars {
		if !agentapi.IsVarName(name) {
			errs = append(errs, fmt.Errorf("start_step_request.output_vars[%d] %q: want a variable name", i, name))
			continue
		}
		outs = append(outs, output{Key: name, From: name, Type: OutputString})
	}
	return outs, errs
}

// posixShell reports whether the entrypoint is a POSIX shell taking a
// script with -c (sh, bash, dash, ash, zsh; by path or name).
func posixShell(entrypoint []string) bool {
	if len(entrypoint) < 2 || entrypoint[len(entrypoint)-1] != "-c" {
		return false
	}
	shell := path.Base(strings.ReplaceAll(entrypoint[0], `\`, "/"))
	return slices.Contains([]string{"sh", "bash", "dash", "ash", "zsh"}, shell)
}

// outputEpilogue appends to a script what writes each output's shell
// variable to $SLIPWAY_OUTPUT under the output's name, keeping the script's
// exit status. Each value goes as a heredoc with a delimiter no value line
// can equal.
func outputEpilogue(outputs []output) string {
	var b strings.Builder
	b.WriteString("\n__slipway_rc=$?\n")
	for _, o := range outputs {
		fmt.Fprintf(&b, "printf '%%s<<SLIPWAY_EOF_%[1]s\\n%%s\\nSLIPWAY_EOF_%[1]s\\n' %[1]s \"${%[2]s-}\" >> \"$SLIPWAY_OUTPUT\"\n", o.Key, o.From)
	}
	b.WriteString("exit $__slipway_rc")
	return b.String()
}

// runTestScript is what a Run Tests step runs when every test runs: the
// pre-command, the build tool's test command with the step's arguments
// (lite-engine's commands when it selects no tests), the post-command.
// Slipway has no test selection of its own yet, so a step that asks to run
// only the selected tests runs them all, as Harness does without a call
// graph.
func runTestScript(c *RunTestConfig) (string, error) {
	args := c.Args
	var test string
	switch strings.ToLower(c.BuildTool) {
	case "maven":
		test = "mvn " + args
	case "gradle":
		test = "if [ -x ./gradlew ]; then ./gradlew " + args + "; else gradle " + args + "; fi"
	case "bazel":
		test = "bazel " + args + " //..."
	case "sbt":
		test = "sbt " + args + " 'test'"
	case "pytest":
		test = "python3 -m pytest " + args
	case "unittest":
		test = "python3 -m unittest " + args
	case "rspec":
		test = "bundle exec rspec " + args
	case "dotnet":
		test = "dotnet " + args
	case "nunitconsole":
		test = args
	default:
		return "", fmt.Errorf("start_step_request.run_test.build_tool %q: want maven, gradle, bazel, sbt, pytest, unittest, rspec, dotnet or nunitconsole", c.BuildTool)
	}
	return strings.Join([]string{c.PreCommand, strings.TrimSpace(test), c.PostCommand}, "\n"), nil
}

func pullPolicy(p string) (string, error) {
	switch p {
	case "", "default":
		return "", nil
	case "Always":
		return agentapi.PullAlways, nil
	case "IfNotPresent":
		return agentapi.PullIfMissing, nil
	case "Never":
		return agentapi.PullNever, nil
	}
	return "", fmt.Errorf("start_step_request.pull %q: want default, Always, IfNotPresent or Never", p)
}

// toPoll is a Slipway step's end as lite-engine tells it: error is set
// exactly when the step did not succeed, for the delegate takes a step to
// have succeeded when error is empty (StepExecutionHelper). Secret outputs,
// sealed to key, are opened for outputV2 only, where the CI manager
// encrypts them.
func toPoll(s *stage.StepStatus, r *StartStep, stageID string, key *ecdh.PrivateKey) *PollStepResponse {
	if s.State == stage.StateBackground {
		return &PollStepResponse{} // started, and running on: lite-engine's answer for a detached step
	}
	p := &PollStepResponse{Exited: true, OOMKilled: s.OOMKilled}
	if s.ExitCode != nil {
		p.ExitCode = *s.ExitCode
	}
	if agentapi.StepState(s.State) != agentapi.StepSucceeded {
		var why string
		switch agentapi.StepState(s.State) {
		case agentapi.StepFailed:
			why = fmt.Sprintf("exit status %d", p.ExitCode)
			if s.OOMKilled {
				why = "oom killed"
			}
		case agentapi.StepTimedOut:
			why = fmt.Sprintf("step timed out after %ds", r.Timeout)
		case agentapi.StepCanceled:
			why = "step canceled"
		default:
			why = "step " + s.State
		}
		p.Error = strings.TrimSuffix(why+": "+s.Error, ": ")
	}
	outputs, _ := declaredOutputs(r)
	var unopened []string
	for _, o := range outputs {
		v, ok := s.Outputs[o.Key]
		if !ok {
			continue
		}
		if o.Type == OutputSecret {
			var err error
			if v, err = agentapi.OpenOutput(key, stageID, s.ID, o.Key, v); err != nil {
				unopened = append(unopened, err.Error())
				continue
			}
		} else {
			if p.Outputs == nil {
				p.Outputs = map[string]string{}
			}
			p.Outputs[o.Key] = v
		}
		p.OutputV2 = append(p.OutputV2, OutputV2{Key: o.Key, Value: v, Type: o.Type})
	}
	if len(unopened) > 0 && p.Error == "" {
		// lite-engine fails a step whose declared outputs it cannot read.
		p.Error = strings.Join(unopened, "; ")
	}
	return p
}

func refusals(paths []string) []error {
	var errs []error
	for _, p := range paths {
		errs = append(errs, fmt.Errorf("%s: not supported by Slipway's drop-in", p))
	}
	return errs
}

func prefixed(prefix string, paths []string) []string {
	for i := range paths {
		paths[i] = prefix + paths[i]
	}
	return paths
}
