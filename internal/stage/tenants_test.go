package stage_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/slipway-ci/slipway/internal/stage"
)

// A stage is its creator's: another delegate cannot see it, list it, read
// its steps or logs, cancel it, cancel its steps or add to it (its steps
// would get the stage's secrets); to it the stage does not exist. Its id
// is taken all the same, and saying so tells nothing of the stage. The
// creator's other sessions are the creator, and an operator sees all.
func TestStagesAreTheirOwners(t *testing.T) {
	e := newEnv(t, testPool("p", 0, 2))
	a, b, op := e.as(callerA), e.as(callerB), e.as(callerOperator)
	spec := stage.Spec{ID: "a1", Pool: "p", Secrets: map[string]string{"TOKEN": "a's s3cret"}}
	if got := a.do(t, "POST", "/v1/stages", spec, true); got.status != http.StatusCreated {
		t.Fatalf("a creates: %d %s", got.status, got.body)
	}
	group := stage.Group{Steps: []stage.Step{{ID: "steal", Step: script("echo $TOKEN")}}, Final: true}

	notThere := func(t *testing.T, who *env, method, path string, body any) {
		t.Helper()
		got := who.do(t, method, path, body, false)
		if got.status != http.StatusNotFound || got.errorMessage() != `not_found: no stage "a1"` {
			t.Errorf("%s %s as another: %d %s, want the 404 of a stage that does not exist", method, path, got.status, got.body)
		}
	}
	for _, c := range []struct {
		method, path string
		body         any
	}{
		{"GET", "/v1/stages/a1", nil},
		{"GET", "/v1/stages/a1?wait=1s", nil},
		{"DELETE", "/v1/stages/a1", nil},
		{"POST", "/v1/stages/a1/groups", group},
		{"GET", "/v1/stages/a1/steps/steal", nil},
		{"GET", "/v1/stages/a1/steps/steal/logs", nil},
		{"POST", "/v1/stages/a1/steps/steal/cancel", nil},
	} {
		notThere(t, b, c.method, c.path, c.body)
	}
	// As for an id nobody used.
	if got := b.do(t, "GET", "/v1/stages/never", nil, false); got.errorMessage() != `not_found: no stage "never"` {
		t.Errorf("an unused id: %s", got.body)
	}
	// The id is taken: a 409 that says no more, whatever b sends.
	for _, body := range []stage.Spec{spec, {ID: "a1", Pool: "p"}} {
		got := b.do(t, "POST", "/v1/stages", body, false)
		if got.status != http.StatusConflict || got.errorMessage() != "conflict: stage id a1 is taken: choose another" {
			t.Errorf("b creates a1: %d %s", got.status, got.body)
		}
	}
	var list stage.StageList
	b.do(t, "GET", "/v1/stages", nil, true).decode(t, &list)
	if len(list.Stages) != 0 {
		t.Errorf("b lists %+v", list.Stages)
	}

	// Nothing b did changed a's stage: still open, no group, not canceled.
	var st stage.Status
	a.do(t, "GET", "/v1/stages/a1", nil, true).decode(t, &st)
	if st.Result != "" || len(st.Groups) != 0 || st.Closed {
		t.Fatalf("a's stage after b's calls: %+v", st)
	}
	// Another session of a's role is a.
	if got := e.as(callerASession).do(t, "GET", "/v1/stages/a1", nil, true); got.status != http.StatusOK {
		t.Errorf("a's other session: %d %s", got.status, got.body)
	}
	a.do(t, "GET", "/v1/stages", nil, true).decode(t, &list)
	if len(list.Stages) != 1 || list.Stages[0].ID != "a1" {
		t.Errorf("a lists %+v", list.Stages)
	}
	// The operator sees every stage and may end any.
	if got := b.do(t, "POST", "/v1/stages", stage.Spec{ID: "b1", Pool: "p"}, true); got.status != http.StatusCreated {
		t.Fatalf("b creates: %d %s", got.status, got.body)
	}
	op.do(t, "GET", "/v1/stages", nil, true).decode(t, &list)
	if len(list.Stages) != 2 {
		t.Errorf("the operator lists %+v", list.Stages)
	}
	if got := op.do(t, "DELETE", "/v1/stages/a1", nil, true); got.status != http.StatusAccepted {
		t.Errorf("the operator cancels a's stage: %d %s", got.status, got.body)
	}
	// A call API Gateway did not authenticate is refused.
	if got := e.as("").do(t, "GET", "/v1/stages", nil, false); got.status != http.StatusForbidden {
		t.Errorf("no caller: %d %s", got.status, got.body)
	}
}

// A pool that names its principals takes stages from them (and the
// operators) only, and says so.
func TestPoolsTakeTheirPrincipals(t *testing.T) {
	closed := testPool("team-a", 0, 1)
	closed.Principals = []string{"arn:aws:iam::123456789012:role/delegate-a"}
	e := newEnv(t, closed, testPool("open", 0, 1))
	got := e.as(callerB).do(t, "POST", "/v1/stages", stage.Spec{ID: "b1", Pool: "team-a"}, false)
	if got.status != http.StatusForbidden || !strings.Contains(got.errorMessage(), "pool team-a does not take stages from "+callerB) {
		t.Errorf("b in a's pool: %d %s", got.status, got.body)
	}
	for _, c := range []struct{ caller, id, pool string }{
		{callerB, "b2", "open"}, {callerASession, "a1", "team-a"}, {callerOperator, "o1", "team-a"},
	} {
		if got := e.as(c.caller).do(t, "POST", "/v1/stages", stage.Spec{ID: c.id, Pool: c.pool}, true); got.status != http.StatusCreated {
			t.Errorf("%s in %s: %d %s", c.caller, c.pool, got.status, got.body)
		}
	}
}

func TestPrincipalOfASession(t *testing.T) {
	for arn, want := range map[string]string{
		callerASession: callerA,
		"arn:aws-cn:sts::123456789012:assumed-role/ci/session": "arn:aws-cn:iam::123456789012:role/ci",
		"arn:aws:iam::123456789012:user/alice":                 "arn:aws:iam::123456789012:user/alice",
		"arn:aws:iam::123456789012:role/path/to/ci":            "arn:aws:iam::123456789012:role/path/to/ci",
		"arn:aws:sts::123456789012:federated-user/bob":         "arn:aws:sts::123456789012:federated-user/bob",
	} {
		if got := stage.Principal(arn); got != want {
			t.Errorf("%s is %s, want %s", arn, got, want)
		}
	}
}

// A principal has at most MaxActiveStages stages created and not released:
// the next is a 429 that names the limit; a release makes room, and
// another principal is not held back.
func TestActiveStagesPerPrincipal(t *testing.T) {
	e := newEnv(t, testPool("p", 0, 4))
	e.tune(func(s *stage.Settings) { s.MaxActiveStages = 2 })
	for _, id := range []string{"a1", "a2"} {
		if got := e.do(t, "POST", "/v1/stages", stage.Spec{ID: id, Pool: "p"}, true); got.status != http.StatusCreated {
			t.Fatalf("create %s: %d %s", id, got.status, got.body)
		}
	}
	got := e.do(t, "POST", "/v1/stages", stage.Spec{ID: "a3", Pool: "p"}, true)
	if got.status != http.StatusTooManyRequests || got.header.Get("Retry-After") == "" ||
		!strings.Contains(got.errorMessage(), callerA+" has 2 active stages, its most (2)") || !strings.Contains(got.errorMessage(), "maxActiveStages") {
		t.Fatalf("a third: %d %s (Retry-After %q)", got.status, got.body, got.header.Get("Retry-After"))
	}
	// A retry of a stage that counted is that stage.
	if got := e.do(t, "POST", "/v1/stages", stage.Spec{ID: "a1", Pool: "p"}, true); got.status != http.StatusOK {
		t.Errorf("a retried create at the limit: %d %s", got.status, got.body)
	}
	if got := e.as(callerB).do(t, "POST", "/v1/stages", stage.Spec{ID: "b1", Pool: "p"}, true); got.status != http.StatusCreated {
		t.Errorf("another principal: %d %s", got.status, got.body)
	}
	if got := e.do(t, "DELETE", "/v1/stages/a1", nil, true); got.status != http.StatusAccepted {
		t.Fatalf("cancel: %d %s", got.status, got.body)
	}
	if _, err := stage.NewCleanup(e.deps).Handle(t.Context(), stage.CleanupInput{StageID: "a1"}); err != nil {
		t.Fatal(err)
	}
	if got := e.do(t, "POST", "/v1/stages", stage.Spec{ID: "a3", Pool: "p"}, true); got.status != http.StatusCreated {
		t.Errorf("after a release: %d %s", got.status, got.body)
	}
}

// A deployment bounds what a stage may ask for below the API's own limits:
// how long it runs, and how long it waits (holding its VM) for a group.
func TestDeploymentTimeouts(t *testing.T) {
	e := newEnv(t, testPool("p", 0, 2))
	e.tune(func(s *stage.Settings) { s.MaxStageTimeout, s.MaxIdleTimeout = 2*time.Hour, 30*time.Minute })
	got := e.do(t, "POST", "/v1/stages", stage.Spec{ID: "long", Pool: "p", TimeoutSeconds: 3 * 3600, IdleTimeoutSeconds: 3600}, true)
	for _, want := range []string{"timeout_seconds: 10800, at most 7200 in this deployment (maxStageTimeout)", "idle_timeout_seconds: 3600, at most 1800 in this deployment (maxIdleTimeout)"} {
		if got.status != http.StatusBadRequest || !strings.Contains(got.errorMessage(), want) {
			t.Errorf("over the deployment's timeouts: %d %s, want %q", got.status, got.body, want)
		}
	}
	if got := e.do(t, "POST", "/v1/stages", stage.Spec{ID: "fits", Pool: "p", TimeoutSeconds: 7200, IdleTimeoutSeconds: 1800}, true); got.status != http.StatusCreated {
		t.Errorf("at the deployment's timeouts: %d %s", got.status, got.body)
	}
}
