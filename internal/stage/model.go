// Package stage is Slipway's orchestration: the delegate's model of a stage
// (a VM and groups of steps), the delegate API that creates and watches
// stages, and the three handlers the state machine sequences for each stage:
// Init leases a VM and binds its agent, RunGroup runs the groups on it,
// Cleanup releases it. It stands on the stage records (stage/record) and the VMs' (lease), the warm
// pools' keeper (launching and ending VMs), the agent client (the wire) and
// the secret sealer; functions/* and `slipway local` are thin faces over it.
package stage

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/slipway-ci/slipway/agent/agentapi"
)

// Limits of the delegate API.
const (
	MaxBodyBytes       = 1 << 20
	MaxStageTimeout    = 48 * time.Hour
	DefaultTimeout     = time.Hour
	DefaultIdleTimeout = 10 * time.Minute
	MinIdleTimeout     = 10 * time.Second
	DefaultAcquire     = 10 * time.Minute
	// MaxGroupsAtCreate is how many groups POST /v1/stages takes (more come
	// with POST /v1/stages/{id}/groups): they are recorded in one transaction.
	MaxGroupsAtCreate = 50
	// MaxStepsPerGroup: a group's end is one transaction.
	MaxStepsPerGroup = 50
	// MaxStepsPerStage bounds the set of step ids kept on the stage record.
	MaxStepsPerStage = 1000
	// MaxFilesBytes bounds the stage's files: they live in its record, which
	// DynamoDB caps at 400 KB.
	MaxFilesBytes = 256 << 10
	// MaxWait is the longest long-poll: under API Gateway's 29 s.
	MaxWait = 25 * time.Second
	// MaxLogChunk is the most log bytes one answer carries.
	MaxLogChunk = 1 << 20
)

// Spec is the body of POST /v1/stages.
type Spec struct {
	ID   string `json:"id"`
	Pool string `json:"pool"`
	// Env is every step's environment; Secrets too, masked in logs and
	// outputs, sealed before they are stored.
	Env     map[string]string `json:"env,omitempty"`
	Secrets map[string]string `json:"secrets,omitempty"`
	Files   []agentapi.File   `json:"files,omitempty"`
	// TimeoutSeconds bounds the whole stage (default 1 h); past it the stage
	// is timed out and released.
	TimeoutSeconds int64 `json:"timeout_seconds,omitempty"`
	// IdleTimeoutSeconds bounds the wait for the delegate's next group
	// (default 10 min).
	IdleTimeoutSeconds int64 `json:"idle_timeout_seconds,omitempty"`
	// AcquireTimeoutSeconds bounds the wait for a VM (default 10 min).
	AcquireTimeoutSeconds int64 `json:"acquire_timeout_seconds,omitempty"`
	// Groups may give some or all of the stage's groups; a stage whose last
	// group is final was given all of them.
	Groups []Group `json:"groups,omitempty"`
}

// Group is a group of steps that run in parallel: the body of POST
// /v1/stages/{id}/groups, or an element of Spec.Groups.
type Group struct {
	Steps []Step `json:"steps"`
	// Final says no group follows: the stage is released after this one.
	Final bool `json:"final,omitempty"`
}

// Step is one step: an id and what the agent runs.
type Step struct {
	ID string `json:"id"`
	// Background starts the step and leaves it running for the rest of the
	// stage (a service the later groups use, such as a database): its group
	// does not wait for it, and it ends with the stage.
	Background bool `json:"background,omitempty"`
	agentapi.Step
}

// Timeout, IdleTimeout and AcquireTimeout are the spec's, defaults applied.
func (s *Spec) Timeout() time.Duration { return seconds(s.TimeoutSeconds, DefaultTimeout) }

// IdleTimeout is the longest wait for the delegate's next group.
func (s *Spec) IdleTimeout() time.Duration { return seconds(s.IdleTimeoutSeconds, DefaultIdleTimeout) }

// AcquireTimeout is the longest wait for a VM.
func (s *Spec) AcquireTimeout() time.Duration {
	return seconds(s.AcquireTimeoutSeconds, DefaultAcquire)
}

func seconds(n int64, def time.Duration) time.Duration {
	if n == 0 {
		return def
	}
	return time.Duration(n) * time.Second
}

// Closed reports whether the spec gives every group (the last is final): the
// first group with a failed step then ends the stage.
func (s *Spec) Closed() bool { return len(s.Groups) > 0 && s.Groups[len(s.Groups)-1].Final }

// Validate reports every problem of the spec at once, each naming its field.
func (s *Spec) Validate(pools []string) error {
	var errs []error
	bind := agentapi.Stage{ID: s.ID, Env: s.Env, Secrets: s.Secrets, Files: s.Files}
	errs = append(errs, bind.Validate())
	switch {
	case s.Pool == "":
		errs = append(errs, errors.New("pool: required"))
	case !slices.Contains(pools, s.Pool):
		errs = append(errs, fmt.Errorf("pool: unknown pool %q (known: %s)", s.Pool, strings.Join(pools, ", ")))
	}
	filesBytes := 0
	for _, f := range s.Files {
		filesBytes += len(f.Data) + len(f.Path)
	}
	if filesBytes > MaxFilesBytes {
		errs = append(errs, fmt.Errorf("files: %d bytes, at most %d: larger files belong in the steps (fetch them)", filesBytes, MaxFilesBytes))
	}
	errs = append(errs,
		checkSeconds("timeout_seconds", s.TimeoutSeconds, time.Second, MaxStageTimeout),
		checkSeconds("idle_timeout_seconds", s.IdleTimeoutSeconds, MinIdleTimeout, MaxStageTimeout),
		checkSeconds("acquire_timeout_seconds", s.AcquireTimeoutSeconds, time.Second, MaxStageTimeout),
	)
	if len(s.Groups) > MaxGroupsAtCreate {
		errs = append(errs, fmt.Errorf("groups: %d, at most %d at creation (add more with POST /v1/stages/{id}/groups)", len(s.Groups), MaxGroupsAtCreate))
	}
	seen := map[string]string{}
	steps := 0
	secretSets := []map[string]string{s.Secrets}
	for i := range s.Groups {
		g := &s.Groups[i]
		field := fmt.Sprintf("groups[%d]", i)
		if g.Final && i != len(s.Groups)-1 {
			errs = append(errs, fmt.Errorf("%s: final, but groups follow it", field))
		}
		errs = append(errs, g.validate(field, seen))
		for _, step := range g.Steps {
			secretSets = append(secretSets, step.Secrets)
		}
		steps += len(g.Steps)
	}
	if n := agentapi.DistinctSecretBytes(secretSets...); n > agentapi.MaxSecretsBytes {
		errs = append(errs, fmt.Errorf("secrets: the stage's and its steps' are %d bytes, at most %d (the agent masks every step for all of them)", n, agentapi.MaxSecretsBytes))
	}
	if steps > MaxStepsPerStage {
		errs = append(errs, fmt.Errorf("groups: %d steps, at most %d in a stage", steps, MaxStepsPerStage))
	}
	return errors.Join(errs...)
}

// withinDeployment checks the spec's timeouts against the deployment's,
// which may be below the API's own (Validate).
func (s *Spec) withinDeployment(set Settings) error {
	var errs []error
	if d := s.Timeout(); d > set.MaxStageTimeout {
		errs = append(errs, fmt.Errorf("timeout_seconds: %d, at most %d in this deployment (maxStageTimeout)", int64(d/time.Second), int64(set.MaxStageTimeout/time.Second)))
	}
	if d := s.IdleTimeout(); d > set.MaxIdleTimeout {
		errs = append(errs, fmt.Errorf("idle_timeout_seconds: %d, at most %d in this deployment (maxIdleTimeout): a stage that waits holds its VM",
			int64(d/time.Second), int64(set.MaxIdleTimeout/time.Second)))
	}
	return errors.Join(errs...)
}

// Validate reports every problem of a group at once.
func (g *Group) Validate() error { return g.validate("", map[string]string{}) }

// validate checks a group whose fields are named under field; seen holds
// the step ids of earlier groups (id → where).
func (g *Group) validate(field string, seen map[string]string) error {
	prefix := func(f string) string {
		if field == "" {
			return f
		}
		return field + "." + f
	}
	var errs []error
	if len(g.Steps) == 0 || len(g.Steps) > MaxStepsPerGroup {
		errs = append(errs, fmt.Errorf("%s: %d steps, want 1 to %d", prefix("steps"), len(g.Steps), MaxStepsPerGroup))
	}
	for j := range g.Steps {
		step := &g.Steps[j]
		where := prefix(fmt.Sprintf("steps[%d]", j))
		if err := agentapi.ValidateID("step", step.ID); err != nil {
			errs = append(errs, fmt.Errorf("%s.id: %w", where, err))
		} else if other, dup := seen[step.ID]; dup {
			errs = append(errs, fmt.Errorf("%s.id: %q is also the id of %s", where, step.ID, other))
		} else {
			seen[step.ID] = where
		}
		if err := step.Validate(); err != nil {
			errs = append(errs, prefixed(where, err))
		}
	}
	return errors.Join(errs...)
}

// prefixed puts where before each of the problems err joins.
func prefixed(where string, err error) error {
	var errs []error
	for _, line := range strings.Split(err.Error(), "\n") {
		errs = append(errs, fmt.Errorf("%s: %s", where, line))
	}
	return errors.Join(errs...)
}

func checkSeconds(field string, n int64, least, most time.Duration) error {
	if n == 0 {
		return nil
	}
	if n < int64(least/time.Second) || n > int64(most/time.Second) {
		return fmt.Errorf("%s: %d, want %d to %d", field, n, int64(least/time.Second), int64(most/time.Second))
	}
	return nil
}

// hashOf identifies a request body for idempotent retries: the JSON of v
// with every secret value blanked. Nothing derived from a secret's value is
// stored, so two requests that differ only in secret values are one stage.
func hashOf(v any) string {
	data, _ := json.Marshal(v) // maps marshal with sorted keys: canonical
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

func blank(secrets map[string]string) map[string]string {
	if secrets == nil {
		return nil
	}
	out := make(map[string]string, len(secrets))
	for k := range secrets {
		out[k] = ""
	}
	return out
}

// withoutSecrets is the group as stored: step secrets taken out (they are
// sealed apart) and returned keyed "<step id>/<name>".
func (g Group) withoutSecrets() (Group, map[string]string) {
	secrets := map[string]string{}
	out := Group{Final: g.Final, Steps: make([]Step, len(g.Steps))}
	for i, step := range g.Steps {
		for name, v := range step.Secrets {
			secrets[step.ID+"/"+name] = v
		}
		step.Secrets = blank(step.Secrets)
		out.Steps[i] = step
	}
	return out, secrets
}

// stepSecrets takes the secrets of step id out of a group's opened secrets.
func stepSecrets(opened map[string]string, id string) map[string]string {
	var out map[string]string
	for key, v := range opened {
		if step, name, ok := strings.Cut(key, "/"); ok && step == id {
			if out == nil {
				out = map[string]string{}
			}
			out[name] = v
		}
	}
	return out
}

// storedStage is the stage's settings as its record keeps them.
type storedStage struct {
	Env            map[string]string `json:"env,omitempty"`
	Files          []agentapi.File   `json:"files,omitempty"`
	Timeout        time.Duration     `json:"timeout"`
	IdleTimeout    time.Duration     `json:"idle_timeout"`
	AcquireTimeout time.Duration     `json:"acquire_timeout"`
	Closed         bool              `json:"closed,omitempty"`
}

func decodeStored[T any](data []byte, what string) (*T, error) {
	var v T
	if err := json.Unmarshal(data, &v); err != nil {
		return nil, &FaultError{Err: fmt.Errorf("the %s record does not decode: %w", what, err)}
	}
	return &v, nil
}
