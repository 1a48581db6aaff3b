package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/agent/executor"
	"github.com/slipway-ci/slipway/agent/mask"
)

// stage is the bound stage: its folders, its environment and its steps.
//
// A stage folder holds work/ (the workspace steps run in) and steps/ (each
// step's log and outputs file), so step bookkeeping never shows up in the
// user's checkout.
type stage struct {
	spec    agentapi.Stage
	specKey string // canonical JSON of spec, for idempotent binding

	dir, workDir, stepsDir string
	// hostEnv is the agent's environment with the stage's env and secrets
	// layered on top, KEY=VALUE, computed once at bind; containerEnv is the
	// same without the agent's environment.
	hostEnv, containerEnv []string

	// mu guards secrets and matcher too: every secret value the stage has
	// seen, its own and its steps' (a step-scoped secret is masked in every
	// step started after it, in case a later step reads what the first one
	// left), at most agentapi.MaxSecretsBytes in all; the matcher is over
	// all of them.
	secrets     []string
	secretBytes int
	matcher     *mask.Matcher

	// mu guards steps, closing, exports and the usage totals. A step's own
	// state has its own lock.
	mu    sync.Mutex
	steps map[string]*step
	// exports are what ended steps wrote to their $SLIPWAY_ENV: the env of
	// every step started after them. They live in the agent's memory only.
	exports    map[string]string
	closing    bool // being destroyed: no new steps
	cpu        time.Duration
	peakMemory int64
}

// export makes what an ended step exported the env of the steps that start
// after it.
func (st *stage) export(exports map[string]string) {
	if len(exports) == 0 {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.exports == nil {
		st.exports = map[string]string{}
	}
	maps.Copy(st.exports, exports)
}

// sealOutputs seals a step's secret outputs to key and makes their values
// secrets of the stage, masked in every step that starts after.
func (st *stage) sealOutputs(step string, key []byte, values map[string]string) (map[string]string, error) {
	st.mu.Lock()
	err := st.addSecrets(values, nil)
	st.mu.Unlock()
	sealed := map[string]string{}
	var errs []error
	for name, value := range values {
		s, err := agentapi.SealOutput(key, st.spec.ID, step, name, value)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		sealed[name] = s
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("secret outputs are not masked in later steps: %w", err))
	}
	return sealed, errors.Join(errs...)
}

// volume is the stage's folder for the named volume, made on first use and
// open to every step's user, like the workspace.
func (st *stage) volume(name string) (string, error) {
	folder := filepath.Join(st.dir, "volumes", name)
	if err := os.MkdirAll(folder, 0o777); err != nil {
		return "", fmt.Errorf("create volume %s: %w", name, err)
	}
	if err := os.Chmod(folder, 0o777); err != nil {
		return "", fmt.Errorf("create volume %s: %w", name, err)
	}
	return folder, nil
}

func canonical(v any) string {
	b, _ := json.Marshal(v) // the API types always marshal
	return string(b)
}

func (s *Server) bindStage(w http.ResponseWriter, r *http.Request) {
	spec, ok := decodeBody(w, r, nil, s.cfg.BodyTimeout, agentapi.DecodeStage)
	if !ok {
		return
	}
	key := canonical(spec)
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur := s.stage; cur != nil {
		switch {
		case cur.spec.ID != spec.ID:
			writeError(w, http.StatusConflict, agentapi.CodeStageConflict, fmt.Sprintf("the agent is bound to another stage; destroy it before binding %q", spec.ID))
		case cur.specKey != key:
			writeError(w, http.StatusConflict, agentapi.CodeStageConflict, fmt.Sprintf("stage %q is already bound with a different spec", spec.ID))
		default:
			writeJSON(w, http.StatusOK, s.healthLocked())
		}
		return
	}
	st, err := s.newStage(spec, key)
	if err != nil {
		s.cfg.Logger.Error("bind stage", "stage", spec.ID, "err", err)
		writeError(w, http.StatusInternalServerError, agentapi.CodeInternal, err.Error())
		return
	}
	s.stage = st
	delete(s.ended, spec.ID)
	s.cfg.Logger.Info("bound stage", "stage", spec.ID, "files", len(spec.Files))
	writeJSON(w, http.StatusCreated, s.healthLocked())
}

func (s *Server) newStage(spec *agentapi.Stage, key string) (*stage, error) {
	dir := filepath.Join(s.cfg.WorkRoot, localName(spec.ID))
	st := &stage{
		spec:     *spec,
		specKey:  key,
		dir:      dir,
		workDir:  filepath.Join(dir, "work"),
		stepsDir: filepath.Join(dir, "steps"),
		steps:    map[string]*step{},
	}
	// A folder left by an earlier agent run of the same stage is stale, and
	// so is every other stage's: one stage at a time.
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("clear stage folder: %w", err)
	}
	removeStale(s.cfg.WorkRoot, localName(spec.ID), s.cfg.Logger)
	// The steps' folder holds their raw outputs and logs: no step may list
	// it, and each step's outputs folder inside is its own (0700), reached
	// by its path.
	for d, mode := range map[string]os.FileMode{st.workDir: 0o755, st.stepsDir: 0o711} {
		if err := os.MkdirAll(d, mode); err != nil {
			return nil, fmt.Errorf("create stage folder: %w", err)
		}
		if err := os.Chmod(d, mode); err != nil {
			return nil, fmt.Errorf("create stage folder: %w", err)
		}
	}
	// Steps may run as another user (Step.User): the workspace is theirs too.
	// The VM serves this one stage, so there is no one to keep out.
	if err := os.Chmod(st.workDir, 0o777); err != nil {
		return nil, fmt.Errorf("create stage folder: %w", err)
	}
	for _, f := range spec.Files {
		if err := writeStageFile(st.workDir, f); err != nil {
			return nil, errors.Join(err, removeAll(dir))
		}
	}
	st.hostEnv = mergeEnv(s.cfg.BaseEnv, spec.Env, spec.Secrets)
	st.containerEnv = mergeEnv(nil, spec.Env, spec.Secrets)
	if err := st.addSecrets(spec.Secrets, nil); err != nil {
		return nil, errors.Join(err, removeAll(dir))
	}
	return st, nil
}

// addSecrets adds the values the stage has not seen to its secrets and
// rebuilds the matcher if there were any; the caller holds mu (or owns st).
// It refuses values that would take the stage over MaxSecretsBytes.
// prebuilt, when not nil, is a matcher already built over exactly the new
// set (see prepareSecrets): the slow part done outside the lock.
func (st *stage) addSecrets(secrets map[string]string, prebuilt *preparedSecrets) error {
	fresh, n := st.freshSecrets(secrets)
	if st.secretBytes+n > agentapi.MaxSecretsBytes {
		return fmt.Errorf("secrets: the stage's so far (%d bytes, its steps' included) and the step's new ones (%d) together are over %d",
			st.secretBytes, n, agentapi.MaxSecretsBytes)
	}
	if len(fresh) == 0 && st.matcher != nil {
		return nil
	}
	st.secrets = append(st.secrets, fresh...)
	st.secretBytes += n
	if prebuilt != nil && prebuilt.seen == len(st.secrets)-len(fresh) && slices.Equal(prebuilt.fresh, fresh) {
		st.matcher = prebuilt.matcher
	} else {
		st.matcher = mask.New(st.secrets...)
	}
	return nil
}

// freshSecrets are the values of secrets the stage has not seen, in a
// stable order, and their size; the caller holds mu.
func (st *stage) freshSecrets(secrets map[string]string) ([]string, int) {
	var fresh []string
	n := 0
	for _, name := range slices.Sorted(maps.Keys(secrets)) {
		if v := secrets[name]; v != "" && !slices.Contains(st.secrets, v) && !slices.Contains(fresh, v) {
			fresh = append(fresh, v)
			n += len(v)
		}
	}
	return fresh, n
}

// preparedSecrets is a matcher built ahead over the stage's secrets as they
// were (the first seen of them) and a step's new ones.
type preparedSecrets struct {
	seen    int
	fresh   []string
	matcher *mask.Matcher
}

// prepareSecrets builds, without holding mu through the build (up to
// about 0.6 s at the limit), the matcher a step's new secrets call for;
// nil when they bring none. addSecrets uses it if nothing changed
// meanwhile.
func (st *stage) prepareSecrets(secrets map[string]string) *preparedSecrets {
	st.mu.Lock()
	fresh, n := st.freshSecrets(secrets)
	seen := len(st.secrets)
	all := append(slices.Clone(st.secrets), fresh...)
	over := st.secretBytes+n > agentapi.MaxSecretsBytes
	st.mu.Unlock()
	if len(fresh) == 0 || over {
		return nil
	}
	return &preparedSecrets{seen: seen, fresh: fresh, matcher: mask.New(all...)}
}

func writeStageFile(workDir string, f agentapi.File) error {
	path := filepath.Join(workDir, filepath.FromSlash(f.Path))
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write file %s: %w", f.Path, err)
	}
	mode := fs.FileMode(f.Mode)
	if mode == 0 {
		mode = 0o644
	}
	if err := os.WriteFile(path, f.Data, mode); err != nil {
		return fmt.Errorf("write file %s: %w", f.Path, err)
	}
	return os.Chmod(path, mode)
}

func (s *Server) destroyStage(w http.ResponseWriter, r *http.Request) {
	id := r.Header.Get(agentapi.StageHeader)
	s.mu.Lock()
	if u, ok := s.ended[id]; ok {
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, u)
		return
	}
	s.mu.Unlock()
	st, ok := s.boundStage(w, r)
	if !ok {
		return
	}
	usage := s.teardown(st)

	s.mu.Lock()
	if s.stage == st {
		s.stage = nil
	}
	s.ended[id] = usage
	s.endedList = append(s.endedList, id)
	if len(s.endedList) > endedStagesKept {
		delete(s.ended, s.endedList[0])
		s.endedList = s.endedList[1:]
	}
	s.mu.Unlock()
	s.cfg.Logger.Info("destroyed stage", "stage", id, "steps", usage.Steps, "cpu_seconds", usage.CPUSeconds)
	writeJSON(w, http.StatusOK, usage)
	if len(st.secrets) > 0 {
		// The masking automata of a stage with large secrets held tens of
		// MB; give them back to the OS now rather than when the runtime
		// gets round to it, since the VM's next stage may want them.
		go debug.FreeOSMemory()
	}
}

// teardown stops every step, waits for them, measures the stage's usage and
// removes its folder (and with it, every step's container mount and log).
func (s *Server) teardown(st *stage) agentapi.Usage {
	st.mu.Lock()
	st.closing = true
	st.mu.Unlock()
	st.stopAll(s.cfg.StopGrace)
	st.waitAll(s.cfg.StopGrace + 10*time.Second)
	// What escaped its step's process group (setsid, daemons) and let go of
	// the step's output dies with the stage: all of its steps' cgroups, and
	// where there are none, what still carries the stage's marker.
	if hp, ok := s.cfg.Host.(*executor.Process); ok {
		if n := hp.KillLeftovers(); n > 0 {
			s.cfg.Logger.Info("killed what steps left running", "stage", st.spec.ID, "steps", n)
		}
	}
	if n := executor.KillMarked("SLIPWAY_STAGE=" + st.spec.ID); n > 0 {
		s.cfg.Logger.Info("killed processes that escaped their steps", "stage", st.spec.ID, "processes", n)
	}

	st.mu.Lock()
	usage := agentapi.Usage{
		Stage:          st.spec.ID,
		CPUSeconds:     st.cpu.Seconds(),
		PeakMemoryByte: st.peakMemory,
		Steps:          len(st.steps),
	}
	for _, stp := range st.steps {
		_ = stp.log.Release()
	}
	matcher := st.matcher
	st.mu.Unlock()
	usage.DiskBytes = diskUsage(st.workDir)
	if err := removeAll(st.dir); err != nil {
		usage.Leftover = err.Error()
		if matcher != nil {
			usage.Leftover = matcher.MaskString(usage.Leftover)
		}
		s.cfg.Logger.Error("the stage folder could not be removed: what its steps left, their raw outputs among it, stays on disk",
			"stage", st.spec.ID, "err", usage.Leftover)
	}
	return usage
}

// removeAll removes path, trying a few times: on Windows a file a process
// has just closed, or one a scanner holds, cannot be deleted for a moment.
func removeAll(path string) error {
	var err error
	for attempt := range removeAttempts {
		if err = os.RemoveAll(path); err == nil {
			return nil
		}
		time.Sleep(time.Duration(50<<attempt) * time.Millisecond)
	}
	return err
}

// removeAttempts bounds removeAll: about 1.5 s in all.
const removeAttempts = 5

func (st *stage) stepList() []*step {
	st.mu.Lock()
	defer st.mu.Unlock()
	return slices.Collect(maps.Values(st.steps))
}

func (st *stage) stopAll(grace time.Duration) {
	for _, stp := range st.stepList() {
		stp.stop(agentapi.StepCanceled, grace)
	}
}

// waitAll waits for every step to end, at most timeout in all.
func (st *stage) waitAll(timeout time.Duration) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for _, stp := range st.stepList() {
		select {
		case <-stp.done:
		case <-deadline.C:
			return
		}
	}
}

func (st *stage) running() int {
	n := 0
	for _, stp := range st.stepList() {
		if !stp.ended() {
			n++
		}
	}
	return n
}

func (st *stage) addUsage(cpu time.Duration, peak int64) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.cpu += cpu
	st.peakMemory = max(st.peakMemory, peak)
}

// diskUsage is the size of the files under dir.
func diskUsage(dir string) int64 {
	var total int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		// A file a step removed meanwhile (err != nil) just counts for nothing.
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				total += info.Size()
			}
		}
		return nil
	})
	return total
}
