package stage

import (
	"net/http"
	"strings"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/internal/apigw"
	"github.com/slipway-ci/slipway/internal/pool"
	"github.com/slipway-ci/slipway/internal/stage/record"
)

// Tenants: every stage belongs to the principal that created it, as API
// Gateway's IAM auth names the caller. Only its owner and the deployment's
// operators see a stage or act on it; to anyone else it does not exist (a
// 404, as for an id never used), and its id, once taken, is a 409 that
// says nothing more. A pool takes stages from the principals it names.

// Principal is the caller that owns what it creates: the IAM ARN API
// Gateway authenticated, an assumed role's session standing for its role
// (arn:aws:sts::A:assumed-role/R/session is arn:aws:iam::A:role/R), so the
// sessions of one delegate role share its stages. A role's path is not in
// the session's ARN: patterns naming roles with a path use *.
func Principal(arn string) string {
	rest, ok := strings.CutPrefix(arn, "arn:")
	if !ok {
		return arn
	}
	parts := strings.SplitN(rest, ":", 5) // partition, service, region, account, resource
	if len(parts) != 5 || parts[1] != "sts" {
		return arn
	}
	resource, ok := strings.CutPrefix(parts[4], "assumed-role/")
	if !ok {
		return arn
	}
	role, _, _ := strings.Cut(resource, "/")
	return "arn:" + parts[0] + ":iam::" + parts[3] + ":role/" + role
}

// caller is the request's principal; a request API Gateway did not
// authenticate is refused.
func (a *API) caller(r *http.Request) (string, error) {
	arn := apigw.Caller(r.Context())
	if arn == "" {
		return "", fail(http.StatusForbidden, CodeForbidden, "the caller is not identified: call the API through API Gateway with IAM auth (SigV4)")
	}
	return Principal(arn), nil
}

// operator reports whether principal is one of the deployment's operators,
// who see and act on every stage.
func (a *API) operator(principal string) bool {
	return pool.MatchesAny(a.settings().Operators, principal)
}

// mayAct reports whether principal may see and act on st: its owner or an
// operator. A stage recorded before stages had owners is anyone's.
func (a *API) mayAct(principal string, st *record.Stage) bool {
	return st.Owner == "" || st.Owner == principal || a.operator(principal)
}

// owned wraps the handler of a call on one stage, whose query takes
// params: the caller must own the stage (or operate the deployment), or it
// is not found. The request is validated first, as the handler would, so
// a bad one is a 400 whoever's the stage; the handler runs only on a stage
// that is there and the caller's (never on one that appears meanwhile:
// another's stage created under a guessed id is not the caller's to act on).
func (a *API) owned(params []string, handle func(http.ResponseWriter, *http.Request) error) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		principal, err := a.caller(r)
		if err != nil {
			return err
		}
		if _, err := parseQuery(r, params...); err != nil {
			return err
		}
		id := r.PathValue("id")
		if r.PathValue("step") != "" {
			if _, _, err := stepPath(r); err != nil {
				return err
			}
		} else if err := agentapi.ValidateID("stage", id); err != nil {
			return invalid(err)
		}
		st, err := a.Stages.GetStage(r.Context(), id)
		if err != nil {
			return err
		}
		if !a.mayAct(principal, st) {
			return notFound(id)
		}
		return handle(w, r)
	}
}

// notFound is the answer for a stage that does not exist, or is not the
// caller's: the two read the same.
func notFound(id string) *apiError {
	return fail(http.StatusNotFound, CodeNotFound, "no stage %q", id)
}
