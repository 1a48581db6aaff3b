package stage

import (
	"errors"

	"github.com/aws/smithy-go"

	"github.com/slipway-ci/slipway/internal/secret"
	"github.com/slipway-ci/slipway/internal/stage/record"
)

// The errors the handlers return. aws-lambda-go reports a returned error's Go
// type name as the Lambda errorType, and the state machine's Retry and Catch
// match on it, so each handler returns one of these types itself, never
// wrapped: ErrorNames lists them, and the state machine's test checks its
// ErrorEquals against that list.

// TransientError is a failure that a retry may not meet: a conflict, a
// throttled or unreachable service. The state machine retries it.
type TransientError struct{ Err error }

func (e *TransientError) Error() string { return e.Err.Error() }
func (e *TransientError) Unwrap() error { return e.Err }

// FaultError is a failure a retry cannot fix: a record that does not
// decode or would not fit, secrets that do not open, a payload without a
// stage id. The state
// machine goes straight to Cleanup, which records the stage's result as
// error.
type FaultError struct{ Err error }

func (e *FaultError) Error() string { return e.Err.Error() }
func (e *FaultError) Unwrap() error { return e.Err }

// ErrorNames are the errorType names the handlers return.
var ErrorNames = []string{"TransientError", "FaultError"}

// boundary turns any error into one of the handlers' error types.
func boundary(err error) error {
	if err == nil {
		return nil
	}
	var fault *FaultError
	var transient *TransientError
	var tooLarge *record.RecordTooLargeError
	switch {
	case errors.As(err, &fault):
		return &FaultError{Err: err}
	case errors.As(err, &transient):
		return &TransientError{Err: err}
	case errors.Is(err, secret.ErrOpen), errors.Is(err, record.ErrStageNotFound), errors.As(err, &tooLarge):
		return &FaultError{Err: err}
	}
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorFault() == smithy.FaultClient && !throttled(apiErr.ErrorCode()) {
		// A request the service refused as malformed or forbidden: the same
		// request will be refused again.
		return &FaultError{Err: err}
	}
	return &TransientError{Err: err}
}

func throttled(code string) bool {
	switch code {
	case "ThrottlingException", "ProvisionedThroughputExceededException", "RequestLimitExceeded",
		"TransactionConflictException", "TransactionCanceledException", "LimitExceededException", "TooManyRequestsException":
		return true
	}
	return false
}
