package harness

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
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
	logs       *logService // nil without a log service
	mtls       MtlsConfig  // for a step that names its own log service
	created    time.Time
	workspace  []string          // host-path volumes: the stage's workspace
	volumes    map[string]string // their paths by name, for container steps to mount
	network    string
	dockerSock bool
}

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
	if s.LogConfig.URL != "" {
		var err error
		if st.logs, err = newLogService(s.LogConfig, s.MtlsConfig); err != nil {
			errs = append(errs, fmt.Errorf("setup_request.%w", err))
		}
	}
	st.volumes = map[string]string{}
	for _, v := range s.Volumes {
		if v.HostPath != nil && v.HostPath.Path != "" {
			st.workspace = append(st.workspace, v.HostPath.Path)
			st.volumes[v.HostPath.Name] = v.HostPath.Path
		}
	}
	env, secrets := splitSecrets(s.Envs, s.Secrets)
	spec := &stage.Spec{
		ID: stageID(r.ID), Pool: pickPool(append([]string{r.PoolID}, r.FallbackPoolIDs...), pools),
		Env: env, Secrets: secrets, TimeoutSeconds: s.Timeout,
		AcquireTimeoutSeconds: (r.ReservationTimeout + 999) / 1000,
	}
	for i, f := range s.Files {
		rel, err := st.relative(fmt.Sprintf("setup_request.files[%d].path", i), f.Path)
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

// relative maps a path on the VM to one in Slipway's stage workspace: a
// relative path stays, a path in a host-path volume becomes relative to it.
func (st *stageOf) relative(field, p string) (string, error) {
	if p == "" {
		return "", nil
	}
	slashed := strings.ReplaceAll(p, `\`, "/")
	if !path.IsAbs(slashed) && !hasDrive(slashed) {
		return strings.TrimPrefix(path.Clean(slashed), "."), nil
	}
	for _, root := range st.workspace {
		root = strings.TrimSuffix(strings.ReplaceAll(root, `\`, "/"), "/")
		if strings.EqualFold(slashed, root) {
			return "", nil
		}
		if len(slashed) > len(root) && strings.EqualFold(slashed[:len(root)+1], root+"/") {
			return path.Clean(slashed[len(root)+1:]), nil
		}
	}
	return "", fmt.Errorf("%s %q: outside the stage's workspace (its host-path volumes: %s); Slipway runs steps in the workspace it makes for the stage",
		field, p, strings.Join(st.workspace, ", "))
}

func hasDrive(p string) bool { return len(p) >= 2 && p[1] == ':' }

// toStep maps a step request to a one-step group of the stage.
func toStep(r *StartStep, st *stageOf) (stage.Step, error) {
	errs := refusals(prefixed("start_step_request.", unsupportedFields(r)))
	if r.ID == "" {
		errs = append(errs, errors.New("start_step_request.id: required"))
	}
	if r.Kind != "" && r.Kind != "Run" {
		errs = append(errs, fmt.Errorf("start_step_request.kind %q: only Run steps map to Slipway (RunTest and RunTestsV2 need Harness Test Intelligence)", r.Kind))
	}
	if r.TestReport.Kind != "" && r.TestReport.Kind != "Junit" {
		errs = append(errs, fmt.Errorf("start_step_request.test_report.kind %q: want Junit", r.TestReport.Kind))
	}
	step := stage.Step{ID: slipwayID("s", r.ID)}
	step.Env, step.Secrets = splitSecrets(r.Envs, r.Secrets)
	step.TimeoutSeconds = r.Timeout
	step.Image, step.User, step.MemoryBytes = r.Image, r.User, r.MemLimit
	// A container step mounting the workspace volume gets the workspace at
	// that path too; its work dir may then be given there.
	dirs := st
	for i, m := range r.Volumes {
		_, known := st.volumes[m.Name]
		switch {
		case !known:
			errs = append(errs, fmt.Errorf("start_step_request.volumes[%d] (%s at %s): only the setup's host-path volumes (the stage's workspace) can be mounted", i, m.Name, m.Path))
		case r.Image == "":
			// A host step sees the workspace where Slipway made it.
		case step.WorkspaceMount != "" && step.WorkspaceMount != m.Path:
			errs = append(errs, fmt.Errorf("start_step_request.volumes[%d] (%s at %s): the workspace is mounted at %s already; Slipway mounts it at one path in a container", i, m.Name, m.Path, step.WorkspaceMount))
		default:
			step.WorkspaceMount = m.Path
			dirs = &stageOf{workspace: append(slices.Clone(st.workspace), m.Path)}
		}
	}
	var err error
	for i, glob := range r.TestReport.Junit.Paths {
		rel, err := dirs.relative(fmt.Sprintf("start_step_request.test_report.junit.paths[%d]", i), glob)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		step.Reports = append(step.Reports, rel)
	}
	if step.WorkDir, err = dirs.relative("start_step_request.working_dir", r.WorkingDir); err != nil {
		errs = append(errs, err)
	}
	if step.Pull, err = pullPolicy(r.Pull); err != nil {
		errs = append(errs, err)
	}
	if r.Image != "" {
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
	}
	outputs := slices.Clone(r.OutputVars)
	for i, o := range r.Outputs {
		if o.Type == "SECRET" {
			errs = append(errs, fmt.Errorf("start_step_request.outputs[%d] (%s): secret outputs are not supported", i, o.Key))
			continue
		}
		outputs = append(outputs, o.Key)
	}
	command := slices.Concat(r.Run.Entrypoint, r.Run.Commands)
	if len(outputs) > 0 {
		if !posixShell(r.Run.Entrypoint) || len(r.Run.Commands) == 0 {
			errs = append(errs, fmt.Errorf("start_step_request.output_vars: outputs are read by a shell epilogue: want entrypoint [sh|bash, -c] and a command, got entrypoint %q", r.Run.Entrypoint))
		} else {
			command[len(r.Run.Entrypoint)] += outputEpilogue(outputs)
		}
		step.Outputs = outputs
	}
	if slices.ContainsFunc(command, func(arg string) bool { return holdsSecret(arg, r.Secrets) }) {
		if !posixShell(r.Run.Entrypoint) || len(r.Run.Commands) != 1 {
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

// posixShell reports whether the entrypoint is a POSIX shell taking a
// script with -c (sh, bash, dash, ash, zsh; by path or name).
func posixShell(entrypoint []string) bool {
	if len(entrypoint) < 2 || entrypoint[len(entrypoint)-1] != "-c" {
		return false
	}
	shell := path.Base(strings.ReplaceAll(entrypoint[0], `\`, "/"))
	return slices.Contains([]string{"sh", "bash", "dash", "ash", "zsh"}, shell)
}

// outputEpilogue appends to a script what writes the named shell variables
// to $SLIPWAY_OUTPUT, keeping the script's exit status. Each value goes as
// a heredoc with a delimiter no value line can equal.
func outputEpilogue(names []string) string {
	var b strings.Builder
	b.WriteString("\n__slipway_rc=$?\n")
	for _, n := range names {
		fmt.Fprintf(&b, "printf '%%s<<SLIPWAY_EOF_%[1]s\\n%%s\\nSLIPWAY_EOF_%[1]s\\n' %[1]s \"${%[1]s-}\" >> \"$SLIPWAY_OUTPUT\"\n", n)
	}
	b.WriteString("exit $__slipway_rc")
	return b.String()
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

// toPoll is a Slipway step's end as lite-engine tells it.
func toPoll(s *stage.StepStatus, r *StartStep) *PollStepResponse {
	p := &PollStepResponse{Exited: true, OOMKilled: s.OOMKilled, Outputs: s.Outputs}
	if s.ExitCode != nil {
		p.ExitCode = *s.ExitCode
	}
	switch agentapi.StepState(s.State) {
	case agentapi.StepSucceeded, agentapi.StepFailed:
	case agentapi.StepTimedOut:
		p.Error = fmt.Sprintf("step timed out after %ds", r.Timeout)
	case agentapi.StepCanceled:
		p.Error = "step canceled"
	default:
		p.Error = "step " + s.State
	}
	if s.Error != "" {
		p.Error = strings.TrimPrefix(p.Error+": "+s.Error, ": ")
	}
	for _, o := range r.Outputs {
		if v, ok := s.Outputs[o.Key]; ok {
			p.OutputV2 = append(p.OutputV2, OutputV2{Key: o.Key, Value: v, Type: "STRING"})
		}
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
