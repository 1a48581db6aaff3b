package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/docker/docker/api/types/registry"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/agent/executor"
	"github.com/slipway-ci/slipway/agent/mask"
	"github.com/slipway-ci/slipway/agent/reports"
	"github.com/slipway-ci/slipway/agent/steplog"
)

// step is one step of the bound stage.
//
// Invariants: status is guarded by mu; done is closed exactly once, after
// status reached a final state and the log was closed; stopReason is set by
// the first stop and decides the final state of a step that was stopped.
type step struct {
	specKey string
	log     *steplog.Log
	// outputDir is the step's own folder for $SLIPWAY_OUTPUT; matcher
	// masks its log and outputs (every secret the stage has seen by its
	// start).
	outputDir string
	matcher   *mask.Matcher
	// exports are the stage's exports when the step started.
	exports map[string]string

	mu         sync.Mutex
	status     agentapi.StepStatus
	handle     executor.Handle
	stopReason agentapi.StepState
	done       chan struct{}
}

func (stp *step) ended() bool {
	select {
	case <-stp.done:
		return true
	default:
		return false
	}
}

func (stp *step) snapshot() agentapi.StepStatus {
	stp.mu.Lock()
	defer stp.mu.Unlock()
	st := stp.status
	if !st.State.Ended() {
		st.LogBytes, _ = stp.log.Size()
	}
	return st
}

// stop ends the step for reason (canceled or timed out); the first reason wins.
func (stp *step) stop(reason agentapi.StepState, grace time.Duration) {
	stp.mu.Lock()
	if stp.stopReason == "" && !stp.status.State.Ended() {
		stp.stopReason = reason
	}
	h := stp.handle
	stp.mu.Unlock()
	if h != nil {
		h.Stop(grace)
	}
}

// startStep starts a step, or returns the status of the step already
// started with the same spec. With ?wait= it then long-polls like
// stepStatus, so a short step costs one round trip.
func (s *Server) startStep(w http.ResponseWriter, r *http.Request, st *stage, id string) {
	wait, err := parseWait(r.URL.Query().Get("wait"))
	if err != nil {
		writeError(w, http.StatusBadRequest, agentapi.CodeInvalid, err.Error())
		return
	}
	st.mu.Lock()
	known := st.matcher
	st.mu.Unlock()
	spec, ok := decodeBody(w, r, known, s.cfg.BodyTimeout, agentapi.DecodeStep)
	if !ok {
		return
	}
	if spec.Image != "" && s.cfg.Docker == nil {
		writeError(w, http.StatusBadRequest, agentapi.CodeInvalid, "container steps need a Docker engine, which this agent does not reach "+
			"(it looks for one in DOCKER_HOST at start; under slipway local, start dockerd and run slipway local with DOCKER_HOST set, "+
			"as .ci/with-services does)")
		return
	}
	key := canonical(spec)
	prepared := st.prepareSecrets(spec.Secrets)

	st.mu.Lock()
	if st.closing {
		st.mu.Unlock()
		writeError(w, http.StatusConflict, agentapi.CodeNotBound, "the stage is being destroyed")
		return
	}
	if cur, ok := st.steps[id]; ok {
		st.mu.Unlock()
		if cur.specKey != key {
			writeError(w, http.StatusConflict, agentapi.CodeStepConflict, fmt.Sprintf("step %q already exists with a different spec", id))
			return
		}
		waitEnd(r, cur, wait)
		writeJSON(w, http.StatusOK, cur.snapshot())
		return
	}
	if err := st.addSecrets(spec.Secrets, prepared); err != nil {
		st.mu.Unlock()
		writeError(w, http.StatusBadRequest, agentapi.CodeInvalid, err.Error())
		return
	}
	stp := &step{
		specKey:   key,
		matcher:   st.matcher,
		log:       steplog.New(filepath.Join(st.stepsDir, localName(id)+".log"), s.cfg.MaxLogBytes),
		outputDir: filepath.Join(st.stepsDir, localName(id)+".outputs"),
		exports:   maps.Clone(st.exports),
		status:    agentapi.StepStatus{ID: id, State: agentapi.StepRunning, StartedAt: time.Now().UTC(), BootID: s.bootID},
		done:      make(chan struct{}),
	}
	// Registered before it starts, so a concurrent PUT of the same id finds it.
	st.steps[id] = stp
	st.mu.Unlock()

	s.run(st, stp, id, spec)
	waitEnd(r, stp, wait)
	writeJSON(w, http.StatusCreated, stp.snapshot())
}

// waitEnd waits until the step ends, wait passes or the client goes away.
func waitEnd(r *http.Request, stp *step, wait time.Duration) {
	if wait <= 0 {
		return
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-stp.done:
	case <-timer.C:
	case <-r.Context().Done():
	}
}

// run starts the step and supervises it in the background.
func (s *Server) run(st *stage, stp *step, id string, spec *agentapi.Step) {
	matcher := stp.matcher
	out := matcher.Writer(stp.log)
	xspec, err := s.execSpec(st, stp, id, spec, out)
	var h executor.Handle
	if err == nil {
		ex := s.cfg.Host
		if spec.Image != "" {
			ex = s.cfg.Docker
		}
		h, err = ex.Start(context.Background(), xspec)
	}
	if err != nil {
		s.finish(st, stp, matcher, out, executor.Result{ExitCode: -1, Err: err}, nil)
		return
	}
	stp.mu.Lock()
	stp.handle = h
	stopped := stp.stopReason != ""
	stp.mu.Unlock()
	if stopped { // canceled while it was starting
		h.Stop(s.cfg.StopGrace)
	}
	go func() {
		var timer *time.Timer
		if t := spec.Timeout(); t > 0 {
			timer = time.AfterFunc(t, func() { stp.stop(agentapi.StepTimedOut, s.cfg.StopGrace) })
		}
		res := h.Wait()
		if timer != nil {
			timer.Stop()
		}
		s.finish(st, stp, matcher, out, res, spec)
	}()
}

// finish records how a step ended; spec is nil for a step that never
// started.
func (s *Server) finish(st *stage, stp *step, matcher *mask.Matcher, out *mask.Writer, res executor.Result, spec *agentapi.Step) {
	// A log that could not be written (a full disk) fails the step: its
	// output is lost, whatever its exit code says.
	logErr := out.Flush()
	if logErr != nil {
		logErr = fmt.Errorf("the step's log could not be written: %w", logErr)
		s.cfg.Logger.Error("step log", "step", stp.status.ID, "err", logErr)
	}
	_ = stp.log.Close()
	size, _ := stp.log.Size()
	if spec == nil {
		spec = &agentapi.Step{}
	}
	outputs, secretOutputs, outErr := readOutputs(stp.outputPath(), matcher, spec.Outputs, spec.SecretOutputs)
	if len(secretOutputs) > 0 {
		sealed, err := st.sealOutputs(stp.status.ID, spec.OutputKey, secretOutputs)
		outErr = errors.Join(outErr, err)
		if outputs == nil {
			outputs = map[string]string{}
		}
		maps.Copy(outputs, sealed)
	}
	exports, expErr := readExports(stp.envPath())
	st.export(exports)
	outErr = errors.Join(outErr, expErr)
	// The raw outputs may hold the step's secrets: gone once read, before
	// the step reads as ended; if they cannot go, the step says so.
	if err := removeAll(stp.outputDir); err != nil {
		s.cfg.Logger.Error("the step's raw outputs could not be removed", "step", stp.status.ID, "err", matcher.MaskString(err.Error()))
		outErr = errors.Join(outErr, fmt.Errorf("the step's raw outputs could not be removed: %w", err))
	}
	// Before the step reads as ended: whoever waits for it gets its tests.
	tests := reports.Collect(st.workDir, spec.Reports, matcher.MaskString)
	st.addUsage(res.CPU, res.PeakMemory)

	stp.mu.Lock()
	ended := time.Now().UTC()
	status := &stp.status
	status.EndedAt = &ended
	status.LogBytes = size
	status.OOMKilled = res.OOMKilled
	status.Outputs = outputs
	status.Tests = tests
	switch {
	case stp.stopReason != "":
		status.State = stp.stopReason
	case res.Err != nil, logErr != nil:
		status.State = agentapi.StepError
	case res.ExitCode == 0:
		status.State = agentapi.StepSucceeded
	default:
		status.State = agentapi.StepFailed
	}
	if res.Err != nil {
		status.Error = matcher.MaskString(errors.Join(res.Err, logErr).Error())
	} else {
		code := res.ExitCode
		status.ExitCode = &code
		if err := errors.Join(logErr, outErr); err != nil {
			status.Error = matcher.MaskString(err.Error())
		}
	}
	state := status.State
	stp.mu.Unlock()
	close(stp.done)
	s.cfg.Logger.Info("step ended", "step", status.ID, "state", state, "log_bytes", size)
}

// execSpec resolves the API's step spec for an executor: command line,
// layered environment (agent < stage < step; containers get no agent
// environment), work dir.
func (s *Server) execSpec(st *stage, stp *step, id string, spec *agentapi.Step, out *mask.Writer) (executor.Spec, error) {
	workDir := st.workDir
	if spec.WorkDir != "" {
		workDir = filepath.Join(st.workDir, filepath.FromSlash(spec.WorkDir))
		if err := os.MkdirAll(workDir, 0o755); err != nil {
			return executor.Spec{}, fmt.Errorf("create work dir: %w", err)
		}
	}
	slipwayEnv := map[string]string{
		"SLIPWAY_STAGE":     st.spec.ID,
		"SLIPWAY_STEP":      id,
		"SLIPWAY_WORKSPACE": st.workDir,
		"SLIPWAY_OUTPUT":    stp.outputPath(),
		"SLIPWAY_ENV":       stp.envPath(),
	}
	if spec.EnvFileVar != "" {
		slipwayEnv[spec.EnvFileVar] = stp.envPath()
	}
	// The registry login goes to the pull only.
	secrets, registryAuth, err := pullSecret(spec)
	if err != nil {
		return executor.Spec{}, err
	}
	var envList []string
	if spec.Image != "" {
		envList = mergeEnv(st.containerEnv, spec.Env, stp.exports, secrets, slipwayEnv)
	} else {
		// os/exec keeps the last of duplicate keys, so the step's layers can
		// simply follow the stage's list: no merge on the step's start path.
		envList = slices.Clone(st.hostEnv)
		for _, layer := range []map[string]string{spec.Env, stp.exports, secrets, slipwayEnv} {
			for k, v := range layer {
				envList = append(envList, k+"="+v)
			}
		}
	}

	// The step's own outputs folder, which no other step may enter: one
	// running as another user owns it.
	if err := os.Mkdir(stp.outputDir, 0o700); err != nil {
		return executor.Spec{}, fmt.Errorf("create outputs folder: %w", err)
	}
	if spec.User != "" {
		if err := chownTo(stp.outputDir, spec.User); err != nil {
			return executor.Spec{}, err
		}
	}

	var argv []string
	switch {
	case len(spec.Command) > 0:
		argv = spec.Command
	case spec.Script != "":
		script := executor.ScriptCommand(runtime.GOOS, spec.Shell, spec.Script, stp.outputDir)
		if script.File != "" {
			if err := os.WriteFile(script.File, script.Data, 0o600); err != nil {
				return executor.Spec{}, fmt.Errorf("write the step's script: %w", err)
			}
			if spec.User != "" {
				if err := chownTo(script.File, spec.User); err != nil {
					return executor.Spec{}, err
				}
			}
		}
		argv = script.Argv
	}
	aliases := map[string]string{}
	if spec.WorkspaceMount != "" {
		aliases[st.workDir] = spec.WorkspaceMount
		workDir = path.Join(spec.WorkspaceMount, filepath.ToSlash(spec.WorkDir))
	}
	for _, v := range spec.Volumes {
		folder, err := st.volume(v.Name)
		if err != nil {
			return executor.Spec{}, err
		}
		aliases[folder] = v.Path
	}
	return executor.Spec{
		Name: st.spec.ID + "-" + id,
		Argv: argv,
		Env:  envList,
		Dir:  workDir,
		User: spec.User,
		// Set last in the environment, so no step can override it.
		Marker:       "SLIPWAY_STEP=" + id,
		Image:        spec.Image,
		Pull:         spec.Pull,
		Network:      spec.Network,
		MemoryBytes:  spec.MemoryBytes,
		Privileged:   spec.Privileged,
		RegistryAuth: registryAuth,
		Mounts:       []string{st.workDir, stp.outputDir},
		Aliases:      aliases,
		Output:       out,
	}, nil
}

func (s *Server) stepStatus(w http.ResponseWriter, r *http.Request, st *stage, id string) {
	stp, ok := st.lookup(w, id)
	if !ok {
		return
	}
	wait, err := parseWait(r.URL.Query().Get("wait"))
	if err != nil {
		writeError(w, http.StatusBadRequest, agentapi.CodeInvalid, err.Error())
		return
	}
	waitEnd(r, stp, wait)
	writeJSON(w, http.StatusOK, stp.snapshot())
}

// parseWait accepts a Go duration ("30s") or whole seconds ("30"); empty
// means no wait.
func parseWait(text string) (time.Duration, error) {
	if text == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(text)
	if err != nil {
		secs, serr := strconv.Atoi(text)
		if serr != nil {
			return 0, fmt.Errorf("wait %q: want a duration such as 30s", text)
		}
		d = time.Duration(secs) * time.Second
	}
	if d < 0 || d > agentapi.MaxWait {
		return 0, fmt.Errorf("wait %q: want 0 to %s", text, agentapi.MaxWait)
	}
	return d, nil
}

func (st *stage) lookup(w http.ResponseWriter, id string) (*step, bool) {
	st.mu.Lock()
	stp, ok := st.steps[id]
	st.mu.Unlock()
	if !ok {
		writeError(w, http.StatusNotFound, agentapi.CodeNotFound, fmt.Sprintf("no step %q in stage %q", id, st.spec.ID))
	}
	return stp, ok
}

func (s *Server) cancelStep(w http.ResponseWriter, _ *http.Request, st *stage, id string) {
	stp, ok := st.lookup(w, id)
	if !ok {
		return
	}
	stp.stop(agentapi.StepCanceled, s.cfg.StopGrace)
	writeJSON(w, http.StatusAccepted, stp.snapshot())
}

// pullSecret takes the registry login out of the step's secrets: the
// secrets for its environment, and the login as the engine takes it.
func pullSecret(spec *agentapi.Step) (map[string]string, string, error) {
	if spec.PullSecret == "" {
		return spec.Secrets, "", nil
	}
	var login registry.AuthConfig
	if err := json.Unmarshal([]byte(spec.Secrets[spec.PullSecret]), &login); err != nil {
		return nil, "", fmt.Errorf("pull_secret %s: not a registry login", spec.PullSecret)
	}
	auth, err := registry.EncodeAuthConfig(login)
	if err != nil {
		return nil, "", fmt.Errorf("pull_secret %s: %w", spec.PullSecret, err)
	}
	secrets := maps.Clone(spec.Secrets)
	delete(secrets, spec.PullSecret)
	return secrets, auth, nil
}

// outputPath is $SLIPWAY_OUTPUT.
func (stp *step) outputPath() string { return filepath.Join(stp.outputDir, "outputs") }

// envPath is the step's $SLIPWAY_ENV: NAME=value lines for later steps.
func (stp *step) envPath() string { return filepath.Join(stp.outputDir, "env") }
