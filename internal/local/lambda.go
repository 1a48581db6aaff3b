package local

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambda/messages"
	"github.com/aws/aws-lambda-go/lambdacontext"
)

// Function is one Lambda function served by the endpoint.
type Function struct {
	Name    string
	Handler lambda.Handler
	// Timeout is the function's timeout, enforced as Lambda does: the
	// handler's context ends then, and the caller gets Sandbox.Timedout.
	Timeout time.Duration
}

// Fault makes one invocation fail, for tests of the state machine's Retry
// and Catch paths: as if the function had returned an error of type Type,
// or, with a Status, as Lambda itself answers when it cannot run the
// function (a 5xx: ServiceException, TooManyRequestsException...).
type Fault struct {
	Type, Message string
	Status        int
}

// LambdaEndpoint serves the Lambda Invoke API (POST
// /2015-03-31/functions/{name}/invocations) for handlers run in this process,
// so that the ASL engine and the Go Lambda client reach them as they reach
// Lambda: AWS_ENDPOINT_URL_LAMBDA points here.
type LambdaEndpoint struct {
	Functions map[string]Function
	Logger    *slog.Logger
	// Inject, when set, is asked before each invocation; a Fault it returns
	// is the invocation's answer.
	Inject func(function string, payload []byte) *Fault

	wg    sync.WaitGroup // asynchronous invocations in flight
	mu    sync.Mutex
	usage map[string]Usage
}

// Usage is what a function's invocations would be billed for: their count
// and their duration, each rounded up to the millisecond as Lambda does.
type Usage struct {
	Invocations int
	Billed      time.Duration
}

// Usage is every function's so far, by short name.
func (e *LambdaEndpoint) Usage() map[string]Usage {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[string]Usage, len(e.usage))
	for k, v := range e.usage {
		out[k] = v
	}
	return out
}

func (e *LambdaEndpoint) bill(function string, took time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.usage == nil {
		e.usage = map[string]Usage{}
	}
	u := e.usage[function]
	u.Invocations++
	u.Billed += (took + time.Millisecond - 1).Truncate(time.Millisecond)
	e.usage[function] = u
}

// maxPayload is Lambda's limit on a synchronous invocation's payload.
const maxPayload = 6 << 20

// ServeHTTP answers one Invoke call.
func (e *LambdaEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name, ok := functionName(r.URL.Path)
	if r.Method != http.MethodPost || !ok {
		lambdaError(w, http.StatusNotFound, "ResourceNotFoundException", "no such operation: "+r.Method+" "+r.URL.Path)
		return
	}
	fn, ok := e.Functions[name]
	if !ok {
		lambdaError(w, http.StatusNotFound, "ResourceNotFoundException", "Function not found: "+name)
		return
	}
	payload, err := io.ReadAll(io.LimitReader(r.Body, maxPayload+1))
	if err != nil {
		lambdaError(w, http.StatusBadRequest, "InvalidRequestContentException", err.Error())
		return
	}
	if len(payload) > maxPayload {
		lambdaError(w, http.StatusRequestEntityTooLarge, "RequestTooLargeException", "payload over 6 MB")
		return
	}
	if len(payload) == 0 {
		payload = []byte("{}")
	}
	arn := "arn:aws:lambda:" + Region + ":" + Account + ":function:" + name
	var fault *Fault
	if e.Inject != nil {
		fault = e.Inject(fn.Name, payload)
	}
	if fault != nil && fault.Status != 0 {
		lambdaError(w, fault.Status, fault.Type, fault.Message)
		return
	}
	switch r.Header.Get("X-Amz-Invocation-Type") {
	case "Event":
		// Lambda queues the event and answers at once; the function runs later.
		e.wg.Go(func() {
			if _, fnErr := e.invoke(context.Background(), fn, arn, payload, fault); fnErr != nil {
				e.log().Warn("asynchronous invocation failed", "function", name, "err_type", fnErr.Type, "err", fnErr.Message)
			}
		})
		w.WriteHeader(http.StatusAccepted)
	case "DryRun":
		w.WriteHeader(http.StatusNoContent)
	default:
		out, fnErr := e.invoke(r.Context(), fn, arn, payload, fault)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Amz-Executed-Version", "$LATEST")
		if fnErr != nil {
			out, _ = json.Marshal(fnErr)
			w.Header().Set("X-Amz-Function-Error", "Unhandled")
		}
		_, _ = w.Write(out)
	}
}

// Wait waits for the asynchronous invocations in flight.
func (e *LambdaEndpoint) Wait() { e.wg.Wait() }

// invoke runs the handler with Lambda's context: the function's deadline
// and the invocation's metadata; an injected fault is its error instead.
func (e *LambdaEndpoint) invoke(parent context.Context, fn Function, arn string, payload []byte, fault *Fault) ([]byte, *messages.InvokeResponse_Error) {
	if fault != nil {
		return nil, &messages.InvokeResponse_Error{Type: fault.Type, Message: fault.Message}
	}
	requestID := newRequestID()
	start := time.Now()
	defer func() { e.bill(fn.Name, time.Since(start)) }()
	// The invocation does not end when the caller hangs up (an ASL engine's
	// Task timeout does not stop a Lambda either), only at its own timeout.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), fn.Timeout)
	defer cancel()
	ctx = lambdacontext.NewContext(ctx, &lambdacontext.LambdaContext{AwsRequestID: requestID, InvokedFunctionArn: arn})
	type answer struct {
		out []byte
		err error
	}
	done := make(chan answer, 1)
	go func() {
		defer func() {
			if v := recover(); v != nil {
				done <- answer{err: fmt.Errorf("panic: %v", v)}
			}
		}()
		out, err := fn.Handler.Invoke(ctx, payload)
		done <- answer{out, err}
	}()
	select {
	case a := <-done:
		if a.err != nil {
			return nil, &messages.InvokeResponse_Error{Type: errorType(a.err), Message: a.err.Error()}
		}
		return a.out, nil
	case <-ctx.Done():
		// What Lambda answers when a function runs past its timeout.
		return nil, &messages.InvokeResponse_Error{
			Type:    "Sandbox.Timedout",
			Message: fmt.Sprintf("RequestId: %s Error: Task timed out after %.2f seconds", requestID, fn.Timeout.Seconds()),
		}
	}
}

// errorType names an error as aws-lambda-go does for the errorType field
// (and so for the ASL's Retry and Catch): the Go type's name, without the
// pointer; an InvokeResponse_Error names itself.
func errorType(err error) string {
	if ire, ok := err.(messages.InvokeResponse_Error); ok { //nolint:errorlint // aws-lambda-go looks at the error itself, not its chain
		return ire.Type
	}
	t := reflect.TypeOf(err)
	if t.Kind() == reflect.Pointer {
		return t.Elem().Name()
	}
	return t.Name()
}

// functionName takes the function's name from the path; the name may be an
// ARN (URL-encoded) or carry a qualifier.
func functionName(path string) (string, bool) {
	rest, ok := strings.CutPrefix(path, "/2015-03-31/functions/")
	if !ok {
		return "", false
	}
	name, ok := strings.CutSuffix(rest, "/invocations")
	if !ok || name == "" || strings.Contains(name, "/") {
		return "", false
	}
	if i := strings.Index(name, ":function:"); i >= 0 {
		name = name[i+len(":function:"):]
	}
	name, _, _ = strings.Cut(name, ":") // a version or alias
	return name, true
}

func lambdaError(w http.ResponseWriter, status int, typ, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Amzn-ErrorType", typ)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"Type": "User", "message": msg})
}

func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func (e *LambdaEndpoint) log() *slog.Logger {
	if e.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return e.Logger
}
