package stage

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/aws/smithy-go"
)

// requestBudget bounds a call of the API, dependencies and long-polls
// included: under API Gateway's 29 s, so a dependency that does not answer
// is our 503, not the gateway's timeout (or, under `slipway local`, a
// request that hangs).
const requestBudget = 28 * time.Second

// retryAfterUnavailable is what a 503 asks the caller to wait.
const retryAfterUnavailable = "5"

// unavailable tells a service that did not answer (unreachable, too slow,
// failing, throttling) from one that refused the request: the former is a
// 503 naming it, worth retrying; the latter is a fault of ours, a 500.
func unavailable(err error) (*apiError, bool) {
	var op *smithy.OperationError
	if !errors.As(err, &op) {
		if errors.Is(err, context.DeadlineExceeded) {
			return fail(http.StatusServiceUnavailable, CodeUnavailable, "a service did not answer in time: try again"), true
		}
		return nil, false
	}
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorFault() == smithy.FaultClient && !throttled(apiErr.ErrorCode()) {
		return nil, false
	}
	return fail(http.StatusServiceUnavailable, CodeUnavailable, "%s did not answer (%s): try again", serviceName(op.ServiceID), op.OperationName), true
}

// serviceName is a service as an operator knows it.
func serviceName(id string) string {
	switch id {
	case "SFN":
		return "Step Functions"
	case "":
		return "a service"
	}
	return id
}
