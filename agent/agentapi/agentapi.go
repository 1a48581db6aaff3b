// Package agentapi holds the agent's wire types: the JSON the agent accepts
// and returns, their validation, and the error codes. The agent server and
// the Go client both use it, so the two cannot drift apart.
package agentapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"path"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/bmatcuk/doublestar/v4"
)

// StageHeader carries the bound stage id on every call after binding.
const StageHeader = "Slipway-Stage"

// Log response headers and trailer.
const (
	// LogOffsetHeader is the log offset of the first byte of the body.
	LogOffsetHeader = "Slipway-Log-Offset"
	// LogDoneTrailer is "1" when the step has ended and the body reached the end of its log.
	LogDoneTrailer = "Slipway-Log-Done"
)

// Limits on a log read: the chunk a read without a limit gets, and the
// largest a limit may ask for.
const (
	DefaultLogChunk = 1 << 20
	MaxLogChunk     = 8 << 20
)

// MaxAnswerBytes bounds a JSON answer of the agent as its client reads it:
// a status holds at most 1 MiB of outputs (6 MiB as JSON if every byte is
// escaped) and a test summary. A VM is not trusted with its caller's memory.
const MaxAnswerBytes = 16 << 20

// Limits on requests.
const (
	MaxIDLength  = 64
	MaxBodyBytes = 8 << 20
	MaxTimeout   = 48 * time.Hour
	MaxWait      = 60 * time.Second
	MaxEnvVars   = 1000
	MaxOutputs   = 100
	// MaxSecretBytes bounds one secret's value and MaxSecretsBytes the
	// distinct values a stage is masked for (its own secrets and every
	// step's: a step-scoped secret is masked in the steps after it too): the
	// masking automaton holds about 600 bytes per byte of secret (every
	// variant of it), so a stage at the limit costs the agent about 80 MB.
	// Larger values belong in files, which are not masked.
	MaxSecretBytes  = 32 << 10
	MaxSecretsBytes = 128 << 10
	// MinMemoryBytes is Docker's own floor for a memory limit.
	MinMemoryBytes = 6 << 20
	MaxMemoryBytes = 1 << 40
)

var (
	idPattern      = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	envNamePattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// IsVarName reports whether name is a shell variable's name: what env
// keys, outputs and the variables a step's files name are.
func IsVarName(name string) bool { return envNamePattern.MatchString(name) }

// ValidateID checks a stage or step id: letters, digits, '_' and '-', at most 64.
func ValidateID(kind, id string) error {
	if !idPattern.MatchString(id) {
		return fmt.Errorf("%s id %q: want 1-%d characters from [A-Za-z0-9_-]", kind, truncateValue(id), MaxIDLength)
	}
	return nil
}

// Health is the answer of GET /v1/health.
type Health struct {
	Version       string  `json:"version"`
	OS            string  `json:"os"`
	Arch          string  `json:"arch"`
	BootID        string  `json:"boot_id"`
	UptimeSeconds float64 `json:"uptime_seconds"`
	Stage         string  `json:"stage,omitempty"`
	RunningSteps  int     `json:"running_steps"`
	Docker        bool    `json:"docker"`
}

// File is a file the agent writes into the stage's work dir when it binds.
type File struct {
	// Path is relative to the stage work dir and may not leave it.
	Path string `json:"path"`
	// Mode is the permission bits; 0 means 0644.
	Mode uint32 `json:"mode,omitempty"`
	Data []byte `json:"data"`
}

// Stage is the body of PUT /v1/stage.
type Stage struct {
	ID  string            `json:"id"`
	Env map[string]string `json:"env,omitempty"`
	// Secrets are environment variables of every step whose values are masked
	// in logs and outputs.
	Secrets map[string]string `json:"secrets,omitempty"`
	Files   []File            `json:"files,omitempty"`
}

// Validate reports every problem of a stage spec at once.
func (s *Stage) Validate() error {
	errs := []error{ValidateID("stage", s.ID)}
	errs = append(errs, validateEnv("env", s.Env), validateEnv("secrets", s.Secrets), validateSecrets(s.Secrets))
	files := map[string]int{} // clean path -> index
	for i, f := range s.Files {
		if clean, err := cleanRelPath(f.Path); err != nil {
			errs = append(errs, fmt.Errorf("files[%d]: %w", i, err))
		} else if clean == "." {
			errs = append(errs, fmt.Errorf("files[%d]: path %q is the work dir itself", i, truncateValue(f.Path)))
		} else if j, dup := files[clean]; dup {
			errs = append(errs, fmt.Errorf("files[%d]: path %q is also files[%d]'s", i, truncateValue(f.Path), j))
		} else {
			files[clean] = i
		}
		if f.Mode&^0o777 != 0 {
			errs = append(errs, fmt.Errorf("files[%d]: mode %o has bits beyond 0777", i, f.Mode))
		}
	}
	// A file cannot also be a folder of another.
	for clean, i := range files {
		for dir := path.Dir(clean); dir != "."; dir = path.Dir(dir) {
			if j, ok := files[dir]; ok {
				errs = append(errs, fmt.Errorf("files[%d]: %q is under files[%d] (%q), which is a file", i, truncateValue(clean), j, truncateValue(dir)))
			}
		}
	}
	return errors.Join(errs...)
}

// Shells a script step may name.
var Shells = []string{"sh", "bash", "powershell", "pwsh", "cmd"}

// Pull policies of container steps.
const (
	PullIfMissing = "if-missing"
	PullNever     = "never"
	PullAlways    = "always"
)

// Step is the body of PUT /v1/steps/{id}.
type Step struct {
	// Command is the argv of the step, run without a shell.
	Command []string `json:"command,omitempty"`
	// Script is run by Shell (default sh, or powershell on Windows).
	Script string `json:"script,omitempty"`
	Shell  string `json:"shell,omitempty"`
	// Image runs the step in a container of this image; without Command or
	// Script the image's own entrypoint runs.
	Image string `json:"image,omitempty"`
	// Pull is when to pull Image: if-missing (default), never or always.
	Pull string `json:"pull,omitempty"`
	// Network of a container step: host (default) or none.
	Network string `json:"network,omitempty"`
	// MemoryBytes limits a container step's memory; past it the kernel's
	// OOM killer ends the step and the status says so. 0: no limit.
	MemoryBytes int64 `json:"memory_bytes,omitempty"`
	// WorkspaceMount also mounts the stage's workspace at this absolute path
	// of a container step, whose work_dir is then relative to it (images
	// and CI systems that expect the sources at /harness, /workspace…).
	WorkspaceMount string `json:"workspace_mount,omitempty"`
	// Volumes mount folders of the stage, shared by its steps and made on
	// first use, into a container step (a CI system's tool and cache
	// folders: Harness's /addon, shared paths).
	Volumes []Volume `json:"volumes,omitempty"`
	// PullSecret names the entry of Secrets that holds the registry login
	// for Image, as Docker's AuthConfig JSON ({"username", "password",
	// "serveraddress"}); that entry goes to the engine's pull only, not
	// into the step's environment.
	PullSecret string `json:"pull_secret,omitempty"`
	// Privileged runs a container step with every capability and device
	// (docker-in-docker builds). A build VM serves one stage and is then
	// terminated, so this gives a step nothing beyond its own VM.
	Privileged bool              `json:"privileged,omitempty"`
	Env        map[string]string `json:"env,omitempty"`
	// EnvFileVar also names the step's env file ($SLIPWAY_ENV) with this
	// variable, for CI systems with a name of their own for it (DRONE_ENV).
	EnvFileVar string            `json:"env_file_var,omitempty"`
	Secrets    map[string]string `json:"secrets,omitempty"`
	// WorkDir is relative to the stage work dir.
	WorkDir string `json:"work_dir,omitempty"`
	// User is uid or uid:gid.
	User           string   `json:"user,omitempty"`
	TimeoutSeconds int64    `json:"timeout_seconds,omitempty"`
	Outputs        []string `json:"outputs,omitempty"`
	// SecretOutputs are outputs whose values are secrets: each is sealed
	// to OutputKey (see SealOutput) and masked in every later step of the
	// stage, never returned in plaintext.
	SecretOutputs []string `json:"secret_outputs,omitempty"`
	// OutputKey is the X25519 public key secret outputs are sealed to; its
	// private key is the stage creator's alone.
	OutputKey []byte `json:"output_key,omitempty"`
	// Reports are globs, relative to the workspace ("**/TEST-*.xml",
	// "**/*.trx"), of the JUnit XML and TRX files the step writes; after
	// the step its status carries their totals and failed tests.
	Reports []string `json:"reports,omitempty"`
}

// Volume is a folder of the stage, by name, mounted at Path in a container.
type Volume struct {
	Name string `json:"name"`
	Path string `json:"path"`
}

var volumeNamePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// validMountPath reports whether p is a clean absolute path in a container
// other than /, without ':' (the engine's bind separator).
func validMountPath(p string) bool {
	return path.IsAbs(p) && path.Clean(p) == p && p != "/" && !strings.ContainsAny(p, ":\x00") && len(p) <= 1024
}

var userPattern = regexp.MustCompile(`^[0-9]{1,10}(:[0-9]{1,10})?$`)

// maxID is the largest uid or gid: they are 32 bits, and 2³²−1 means none.
const maxID = 1<<32 - 2

func validUser(u string) bool {
	if !userPattern.MatchString(u) {
		return false
	}
	for _, id := range strings.Split(u, ":") {
		if n, err := strconv.ParseUint(id, 10, 64); err != nil || n > maxID {
			return false
		}
	}
	return true
}

// MaxVolumes bounds the stage folders one container step mounts.
const MaxVolumes = 16

func validateVolumes(volumes []Volume, workspaceMount string) error {
	var errs []error
	if len(volumes) > MaxVolumes {
		errs = append(errs, fmt.Errorf("volumes: %d, at most %d", len(volumes), MaxVolumes))
	}
	paths := map[string]bool{workspaceMount: workspaceMount != ""}
	names := map[string]bool{}
	for i, v := range volumes {
		if !volumeNamePattern.MatchString(v.Name) {
			errs = append(errs, fmt.Errorf("volumes[%d].name %q: want 1 to 64 of A-Z a-z 0-9 _ . -, starting with a letter or digit", i, truncateValue(v.Name)))
		} else if names[v.Name] {
			errs = append(errs, fmt.Errorf("volumes[%d].name %q: given twice", i, v.Name))
		}
		names[v.Name] = true
		switch {
		case !validMountPath(v.Path):
			errs = append(errs, fmt.Errorf("volumes[%d].path %q: want a clean absolute path in the container other than /, without ':'", i, truncateValue(v.Path)))
		case paths[v.Path]:
			errs = append(errs, fmt.Errorf("volumes[%d].path %q: something else is mounted there already", i, v.Path))
		}
		paths[v.Path] = true
	}
	return errors.Join(errs...)
}

// Validate reports every problem of a step spec at once.
func (s *Step) Validate() error {
	var errs []error
	switch {
	case len(s.Command) > 0 && s.Script != "":
		errs = append(errs, errors.New("give command or script, not both"))
	case len(s.Command) == 0 && s.Script == "" && s.Image == "":
		errs = append(errs, errors.New("empty step: give command, script or image"))
	case len(s.Command) > 0 && s.Command[0] == "":
		errs = append(errs, errors.New("command[0] is empty"))
	}
	for i, arg := range s.Command {
		if strings.IndexByte(arg, 0) >= 0 {
			errs = append(errs, fmt.Errorf("command[%d] contains a NUL byte", i))
		}
	}
	if strings.IndexByte(s.Script, 0) >= 0 {
		errs = append(errs, errors.New("script contains a NUL byte"))
	}
	if s.Shell != "" && !slices.Contains(Shells, s.Shell) {
		errs = append(errs, fmt.Errorf("shell %q: want one of %s", truncateValue(s.Shell), strings.Join(Shells, ", ")))
	}
	if s.Shell != "" && s.Script == "" {
		errs = append(errs, errors.New("shell given without script"))
	}
	if s.Pull != "" && !slices.Contains([]string{PullIfMissing, PullNever, PullAlways}, s.Pull) {
		errs = append(errs, fmt.Errorf("pull %q: want if-missing, never or always", truncateValue(s.Pull)))
	}
	if s.Network != "" && s.Network != "host" && s.Network != "none" {
		errs = append(errs, fmt.Errorf("network %q: want host or none", truncateValue(s.Network)))
	}
	if s.Image == "" && (s.Pull != "" || s.Network != "" || s.MemoryBytes != 0 || s.WorkspaceMount != "" || len(s.Volumes) > 0 || s.Privileged) {
		errs = append(errs, errors.New("pull, network, memory_bytes, workspace_mount, volumes and privileged apply to container steps only: give image"))
	}
	if m := s.WorkspaceMount; m != "" && !validMountPath(m) {
		errs = append(errs, fmt.Errorf("workspace_mount %q: want a clean absolute path in the container other than /, without ':'", truncateValue(m)))
	}
	errs = append(errs, validateVolumes(s.Volumes, s.WorkspaceMount))
	for i, name := range s.SecretOutputs {
		if !envNamePattern.MatchString(name) {
			errs = append(errs, fmt.Errorf("secret_outputs[%d] %q: want a variable name", i, truncateValue(name)))
		}
	}
	if len(s.SecretOutputs) > 0 && len(s.OutputKey) != OutputKeyBytes {
		errs = append(errs, fmt.Errorf("output_key: %d bytes; secret outputs are sealed to an X25519 public key of %d", len(s.OutputKey), OutputKeyBytes))
	}
	if s.PullSecret != "" {
		var login struct {
			Username string `json:"username"`
		}
		switch v, ok := s.Secrets[s.PullSecret]; {
		case s.Image == "":
			errs = append(errs, errors.New("pull_secret applies to container steps only: give image"))
		case !ok:
			errs = append(errs, fmt.Errorf("pull_secret %q: not among the step's secrets", truncateValue(s.PullSecret)))
		case json.Unmarshal([]byte(v), &login) != nil:
			errs = append(errs, fmt.Errorf("pull_secret %q: its secret is not a registry login (JSON with username, password, serveraddress)", s.PullSecret))
		}
	}
	if s.EnvFileVar != "" && !envNamePattern.MatchString(s.EnvFileVar) {
		errs = append(errs, fmt.Errorf("env_file_var %q: want a variable name", truncateValue(s.EnvFileVar)))
	}
	if s.MemoryBytes != 0 && (s.MemoryBytes < MinMemoryBytes || s.MemoryBytes > MaxMemoryBytes) {
		errs = append(errs, fmt.Errorf("memory_bytes %d: want %d to %d", s.MemoryBytes, MinMemoryBytes, MaxMemoryBytes))
	}
	errs = append(errs, validateEnv("env", s.Env), validateEnv("secrets", s.Secrets), validateSecrets(s.Secrets))
	if s.WorkDir != "" {
		if _, err := cleanRelPath(s.WorkDir); err != nil {
			errs = append(errs, fmt.Errorf("work_dir: %w", err))
		}
	}
	if s.User != "" && !validUser(s.User) {
		errs = append(errs, fmt.Errorf("user %q: want uid or uid:gid, each 0 to %d", truncateValue(s.User), maxID))
	}
	if s.TimeoutSeconds < 0 || s.TimeoutSeconds > int64(MaxTimeout/time.Second) {
		errs = append(errs, fmt.Errorf("timeout_seconds %d: want 0 (no timeout) to %d", s.TimeoutSeconds, int64(MaxTimeout/time.Second)))
	}
	if len(s.Outputs) > MaxOutputs {
		errs = append(errs, fmt.Errorf("%d outputs: at most %d", len(s.Outputs), MaxOutputs))
	}
	for _, name := range s.Outputs {
		if !envNamePattern.MatchString(name) {
			errs = append(errs, fmt.Errorf("output name %q: want [A-Za-z_][A-Za-z0-9_]*", truncateValue(name)))
		}
	}
	if len(s.Reports) > MaxReportGlobs {
		errs = append(errs, fmt.Errorf("reports: %d globs, at most %d", len(s.Reports), MaxReportGlobs))
	}
	for i, glob := range s.Reports {
		if !doublestar.ValidatePattern(glob) || strings.HasPrefix(glob, "/") || slices.Contains(strings.Split(glob, "/"), "..") {
			errs = append(errs, fmt.Errorf("reports[%d] %q: want a glob relative to the workspace, as **/TEST-*.xml", i, truncateValue(glob)))
		}
	}
	return errors.Join(errs...)
}

// Truncate cuts s to at most n bytes (on a character boundary) and marks
// the cut with "…".
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// truncateValue shortens a value quoted in an error message: a message
// names what was wrong, it does not echo kilobytes of it.
func truncateValue(s string) string { return Truncate(s, 100) }

// Timeout is the step's timeout, 0 for none.
func (s *Step) Timeout() time.Duration {
	return time.Duration(s.TimeoutSeconds) * time.Second
}

// StepState is where a step is in its life.
type StepState string

// Step states. A step that is not Running has ended.
const (
	StepRunning   StepState = "running"
	StepSucceeded StepState = "succeeded"
	StepFailed    StepState = "failed"
	StepCanceled  StepState = "canceled"
	StepTimedOut  StepState = "timed_out"
	// StepError means the agent could not run the step at all (no such
	// command, image missing); Error says why.
	StepError StepState = "error"
)

// Ended reports whether the state is final.
func (s StepState) Ended() bool { return s != StepRunning && s != "" }

// StepStatus is the answer of the step calls.
type StepStatus struct {
	ID        string            `json:"id"`
	State     StepState         `json:"state"`
	ExitCode  *int              `json:"exit_code,omitempty"`
	OOMKilled bool              `json:"oom_killed,omitempty"`
	StartedAt time.Time         `json:"started_at"`
	EndedAt   *time.Time        `json:"ended_at,omitempty"`
	Outputs   map[string]string `json:"outputs,omitempty"`
	Error     string            `json:"error,omitempty"`
	LogBytes  int64             `json:"log_bytes"`
	// BootID is the agent's boot id: if it differs from the one the caller
	// saw when it started the step, the agent restarted and the step is lost.
	BootID string `json:"boot_id"`
	// Tests is what the step's reports say, once it has ended.
	Tests *TestReport `json:"tests,omitempty"`
}

// TestReport sums the test reports a step wrote.
type TestReport struct {
	Files      int   `json:"files"`
	Tests      int   `json:"tests"`
	Failed     int   `json:"failed"` // failures and errors
	Skipped    int   `json:"skipped"`
	DurationMs int64 `json:"duration_ms"`
	// Failures are the failed tests, the first MaxReportFailures of them.
	Failures []TestFailure `json:"failures,omitempty"`
	// Notes say what could not be read (a malformed or huge file) and
	// what was left out.
	Notes []string `json:"notes,omitempty"`
}

// TestFailure is one failed test.
type TestFailure struct {
	Name    string `json:"name"`
	Class   string `json:"class,omitempty"`
	Message string `json:"message,omitempty"`
	// Output is the first lines of the failure's details and output.
	Output string `json:"output,omitempty"`
}

// Bounds of test reports.
const (
	MaxReportGlobs    = 20
	MaxReportFiles    = 200
	MaxReportBytes    = 20 << 20  // one file
	MaxReportsBytes   = 100 << 20 // all of a step's
	MaxReportFailures = 50
)

// Usage is what a stage consumed, returned by DELETE /v1/stage.
type Usage struct {
	Stage          string  `json:"stage"`
	CPUSeconds     float64 `json:"cpu_seconds"`
	PeakMemoryByte int64   `json:"peak_memory_bytes"`
	DiskBytes      int64   `json:"disk_bytes"`
	Steps          int     `json:"steps"`
	// Leftover says what of the stage's folder could not be removed (it may
	// hold the steps' raw outputs, secrets among them); empty when it all
	// went.
	Leftover string `json:"leftover,omitempty"`
}

// Error codes of ErrorBody.
const (
	CodeInvalid = "invalid"
	// CodeMethodNotAllowed: a known path asked with another method (405, with Allow).
	CodeMethodNotAllowed = "method_not_allowed"
	CodeTooLarge         = "too_large"
	CodeNotFound         = "not_found"
	CodeStageConflict    = "stage_conflict"
	CodeStepConflict     = "step_conflict"
	CodeNotBound         = "not_bound"
	CodeStageMismatch    = "stage_mismatch"
	CodeMissingStage     = "missing_stage"
	CodeInternal         = "internal"
)

// ErrorBody is the body of every 4xx and 5xx answer.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail says what was wrong.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// CarriedSecrets is every secret value a request body carries: the string
// values of every "secrets" object in it, at any depth (a stage's, its
// steps'), read leniently, since the body may be what a refusal is about.
// A refusal quotes parts of the body; masked with these, it quotes none of
// them.
func CarriedSecrets(body []byte) []string {
	var raw any
	if json.Unmarshal(body, &raw) != nil {
		return nil
	}
	var values []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for key, inner := range v {
				if secrets, ok := inner.(map[string]any); ok && key == "secrets" {
					for _, value := range secrets {
						if s, ok := value.(string); ok && s != "" {
							values = append(values, s)
						}
					}
				}
				walk(inner)
			}
		case []any:
			for _, inner := range v {
				walk(inner)
			}
		}
	}
	walk(raw)
	return values
}

// DecodeStrict decodes one JSON value from r into v, refusing trailing
// data, and keys that are not exactly the names of v's fields (every one of
// them, by its path, with the []byte fields that are not base64).
func DecodeStrict(r io.Reader, v any) error {
	dec := json.NewDecoder(r)
	dec.UseNumber()
	var raw any
	if err := dec.Decode(&raw); err != nil {
		return fmt.Errorf("decode body: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("decode body: trailing data after the JSON value")
	}
	var problems []string
	checkKeys(raw, reflect.TypeOf(v), "", &problems)
	if len(problems) > 0 {
		if len(problems) > maxKeyProblems {
			problems = append(problems[:maxKeyProblems], fmt.Sprintf("and %d more", len(problems)-maxKeyProblems))
		}
		return fmt.Errorf("decode body: %s", strings.Join(problems, "; "))
	}
	data, _ := json.Marshal(raw) // a value just decoded encodes
	strict := json.NewDecoder(bytes.NewReader(data))
	strict.DisallowUnknownFields()
	if err := strict.Decode(v); err != nil {
		return fmt.Errorf("decode body: %w", err)
	}
	return nil
}

// DecodeLenient decodes data into v as encoding/json does, ignoring the keys
// v does not declare, and returns what DecodeStrict would have refused for
// them, each by its path: for a peer whose newer versions may add fields,
// which are to be logged, not refused.
func DecodeLenient(data []byte, v any) (ignored []string, err error) {
	if err := json.Unmarshal(data, v); err != nil {
		return nil, fmt.Errorf("decode body: %w", err)
	}
	var raw any
	_ = json.Unmarshal(data, &raw) // data was just decoded
	checkKeys(raw, reflect.TypeOf(v), "", &ignored)
	return ignored, nil
}

// DecodeStep decodes and validates a step spec.
func DecodeStep(r io.Reader) (*Step, error) {
	var s Step
	if err := DecodeStrict(r, &s); err != nil {
		return nil, err
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

// DecodeStage decodes and validates a stage spec.
func DecodeStage(r io.Reader) (*Stage, error) {
	var s Stage
	if err := DecodeStrict(r, &s); err != nil {
		return nil, err
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

// validateSecrets holds each secret to MaxSecretBytes and all of them to
// MaxSecretsBytes.
func validateSecrets(secrets map[string]string) error {
	var errs []error
	total := 0
	for _, name := range slices.Sorted(maps.Keys(secrets)) {
		n := len(secrets[name])
		total += n
		if n > MaxSecretBytes {
			errs = append(errs, fmt.Errorf("secrets: %s: %d bytes, at most %d (larger values belong in files)", name, n, MaxSecretBytes))
		}
	}
	if total > MaxSecretsBytes {
		errs = append(errs, fmt.Errorf("secrets: %d bytes in all, at most %d", total, MaxSecretsBytes))
	}
	return errors.Join(errs...)
}

// DistinctSecretBytes is the size of the distinct values of sets of
// secrets: what masking them costs.
func DistinctSecretBytes(sets ...map[string]string) int {
	seen := map[string]bool{}
	n := 0
	for _, set := range sets {
		for _, v := range set {
			if !seen[v] {
				seen[v] = true
				n += len(v)
			}
		}
	}
	return n
}

func validateEnv(field string, env map[string]string) error {
	if len(env) > MaxEnvVars {
		return fmt.Errorf("%s: %d variables, at most %d", field, len(env), MaxEnvVars)
	}
	var errs []error
	for name, value := range env {
		if !envNamePattern.MatchString(name) {
			errs = append(errs, fmt.Errorf("%s: name %q: want [A-Za-z_][A-Za-z0-9_]*", field, truncateValue(name)))
		}
		if strings.IndexByte(value, 0) >= 0 {
			errs = append(errs, fmt.Errorf("%s: %s: value contains a NUL byte", field, name))
		}
	}
	return errors.Join(errs...)
}

// Path limits: Linux's on a whole path and on one name in it.
const (
	MaxPathBytes = 4095
	maxNameBytes = 255
)

// cleanRelPath checks a path relative to the stage work dir and returns it
// cleaned, with forward slashes.
func cleanRelPath(p string) (string, error) {
	if p == "" {
		return "", errors.New("path is empty")
	}
	if len(p) > MaxPathBytes {
		return "", fmt.Errorf("path %q is %d bytes, at most %d", truncateValue(p), len(p), MaxPathBytes)
	}
	for _, name := range strings.FieldsFunc(p, func(r rune) bool { return r == '/' || r == '\\' }) {
		if len(name) > maxNameBytes {
			return "", fmt.Errorf("path %q has a name of %d bytes, at most %d", truncateValue(p), len(name), maxNameBytes)
		}
	}
	if strings.IndexByte(p, 0) >= 0 {
		return "", fmt.Errorf("path %q contains a NUL byte", truncateValue(p))
	}
	slashed := strings.ReplaceAll(p, `\`, "/")
	if path.IsAbs(slashed) || (len(slashed) > 1 && slashed[1] == ':') {
		return "", fmt.Errorf("path %q must be relative to the stage work dir", truncateValue(p))
	}
	clean := path.Clean(slashed)
	if clean == ".." || strings.HasPrefix(clean, "../") {
		return "", fmt.Errorf("path %q leaves the stage work dir", truncateValue(p))
	}
	return clean, nil
}
