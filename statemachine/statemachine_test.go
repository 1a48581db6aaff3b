package statemachine_test

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/slipway-ci/slipway/internal/stage"
	"github.com/slipway-ci/slipway/statemachine"
)

type retrier struct {
	ErrorEquals []string
}

type catcher struct {
	ErrorEquals []string
	Next        string
	ResultPath  *string
}

type state struct {
	Type           string
	Resource       string
	TimeoutSeconds int
	Retry          []retrier
	Catch          []catcher
	Next           string
	End            bool
	Default        string
	Choices        []struct{ Next string }
	Parameters     map[string]any
	SecondsPath    string
	ResultPath     *string
}

type definition struct {
	StartAt        string
	TimeoutSeconds int
	QueryLanguage  string
	States         map[string]state
}

func load(t *testing.T) definition {
	t.Helper()
	var d definition
	dec := json.NewDecoder(bytes.NewReader(statemachine.Definition))
	if err := dec.Decode(&d); err != nil {
		t.Fatal(err)
	}
	return d
}

// Errors the platform raises: Step Functions' own, Lambda's service errors
// (with the local engine's name for them), and a function past its timeout.
var platformErrors = []string{
	"States.ALL", "States.Timeout", "States.TaskFailed",
	"Lambda.ServiceException", "Lambda.AWSLambdaException", "Lambda.SdkClientException", "Lambda.TooManyRequestsException",
	"ServiceException", "Sandbox.Timedout",
}

var lambdaServiceErrors = []string{"Lambda.ServiceException", "Lambda.AWSLambdaException", "Lambda.SdkClientException", "Lambda.TooManyRequestsException", "ServiceException"}

// TestOnlyWhatTheLocalEngineRuns: JSONPath, Lambda tasks with a plain
// function ARN placeholder, no callbacks, no SDK integrations.
func TestOnlyWhatTheLocalEngineRuns(t *testing.T) {
	text := string(statemachine.Definition)
	for _, banned := range []string{"JSONata", ".waitForTaskToken", "arn:aws:states:::", "Arguments", "Assign", "Output\""} {
		if strings.Contains(text, banned) {
			t.Errorf("the definition uses %q, which the local engine lacks", banned)
		}
	}
	d := load(t)
	if d.QueryLanguage != "" && d.QueryLanguage != "JSONPath" {
		t.Errorf("QueryLanguage %s", d.QueryLanguage)
	}
	if d.TimeoutSeconds <= int(stage.MaxStageTimeout.Seconds()) {
		t.Errorf("the execution times out after %d s, before a stage's longest timeout", d.TimeoutSeconds)
	}
	placeholders := map[string]statemachine.Function{}
	for _, f := range statemachine.Functions {
		if f.Placeholder != "" {
			placeholders["${"+f.Placeholder+"}"] = f
		}
	}
	used := map[string]bool{}
	for name, s := range d.States {
		if s.ResultPath != nil && *s.ResultPath == "$" {
			// aws-local-stepfunctions 3.0.0 writes a key named "$" instead
			// of replacing the state: leave ResultPath out, its default.
			t.Errorf("%s: ResultPath \"$\"", name)
		}
		if s.Type != "Task" {
			continue
		}
		f, ok := placeholders[s.Resource]
		if !ok {
			t.Errorf("%s: Resource %q is not a function placeholder", name, s.Resource)
			continue
		}
		used[s.Resource] = true
		if s.TimeoutSeconds <= int(f.Timeout.Seconds()) {
			t.Errorf("%s: TimeoutSeconds %d does not exceed the %s function's timeout (%s): a Task timeout never stops a Lambda", name, s.TimeoutSeconds, f.Name, f.Timeout)
		}
	}
	if len(used) != len(placeholders) {
		t.Errorf("placeholders used %v of %v", used, placeholders)
	}
}

// TestErrorsAreCaughtAndNamed: every ErrorEquals name is one a handler or
// the platform raises; every Task retries Lambda's service errors and the
// handlers' transient errors, and catches everything into the release.
func TestErrorsAreCaughtAndNamed(t *testing.T) {
	d := load(t)
	known := append(slices.Clone(platformErrors), stage.ErrorNames...)
	for name, s := range d.States {
		if s.Type != "Task" {
			continue
		}
		var retried, caught []string
		for _, r := range s.Retry {
			retried = append(retried, r.ErrorEquals...)
		}
		for _, c := range s.Catch {
			caught = append(caught, c.ErrorEquals...)
			want := "Cleanup"
			if name == "Cleanup" {
				want = "ReleaseFailed"
			}
			if c.Next != want {
				t.Errorf("%s: a Catch leads to %s, not %s", name, c.Next, want)
			}
			if c.ResultPath == nil || *c.ResultPath != "$.error" {
				t.Errorf("%s: a Catch must keep the stage id and put the error at $.error", name)
			}
		}
		for _, e := range append(slices.Clone(retried), caught...) {
			if !slices.Contains(known, e) {
				t.Errorf("%s: ErrorEquals %q is no error a handler or the platform raises (handlers: %v)", name, e, stage.ErrorNames)
			}
		}
		for _, e := range lambdaServiceErrors {
			if !slices.Contains(retried, e) {
				t.Errorf("%s does not retry %s", name, e)
			}
		}
		if !slices.Contains(retried, "TransientError") {
			t.Errorf("%s does not retry the handlers' TransientError", name)
		}
		if !slices.Contains(caught, "States.ALL") {
			t.Errorf("%s does not catch every error", name)
		}
		for _, e := range stage.ErrorNames {
			if !slices.Contains(retried, e) && !slices.Contains(caught, e) && !slices.Contains(caught, "States.ALL") {
				t.Errorf("%s neither retries nor catches %s", name, e)
			}
		}
	}
}

// TestEveryPathEndsInCleanup: from every state, following Next, Choices,
// Default and Catch, Cleanup is reachable, and the only ends are Cleanup
// and the Fail state behind it.
func TestEveryPathEndsInCleanup(t *testing.T) {
	d := load(t)
	next := func(s state) []string {
		var out []string
		if s.Next != "" {
			out = append(out, s.Next)
		}
		if s.Default != "" {
			out = append(out, s.Default)
		}
		for _, c := range s.Choices {
			out = append(out, c.Next)
		}
		for _, c := range s.Catch {
			out = append(out, c.Next)
		}
		return out
	}
	for name, s := range d.States {
		for _, n := range next(s) {
			if _, ok := d.States[n]; !ok {
				t.Errorf("%s leads to %s, which does not exist", name, n)
			}
		}
		if (s.End || s.Type == "Fail" || s.Type == "Succeed") && name != "Cleanup" && name != "ReleaseFailed" {
			t.Errorf("%s ends the execution without the release", name)
		}
		seen := map[string]bool{}
		queue := []string{name}
		for len(queue) > 0 {
			cur := queue[0]
			queue = queue[1:]
			if seen[cur] {
				continue
			}
			seen[cur] = true
			queue = append(queue, next(d.States[cur])...)
		}
		if !seen["Cleanup"] && name != "ReleaseFailed" {
			t.Errorf("no path from %s reaches Cleanup", name)
		}
	}
	if d.StartAt != "Init" {
		t.Errorf("StartAt %s", d.StartAt)
	}
}

func TestSubstitute(t *testing.T) {
	arns := map[string]string{}
	for _, f := range statemachine.Functions {
		arns[f.Name] = "arn:aws:lambda:eu-west-1:111122223333:function:slipway-" + f.Name
	}
	def, err := statemachine.Substitute(arns)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(def, []byte("${")) || !bytes.Contains(def, []byte(`"arn:aws:lambda:eu-west-1:111122223333:function:slipway-rungroup"`)) {
		t.Fatalf("substituted: %s", def)
	}
	if !json.Valid(def) {
		t.Fatal("the substituted definition is not JSON")
	}
	delete(arns, statemachine.Cleanup)
	if _, err := statemachine.Substitute(arns); err == nil || !strings.Contains(err.Error(), "CleanupFunctionArn") {
		t.Fatalf("a missing ARN: %v", err)
	}
}
