package stage_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	dbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/aws-sdk-go-v2/service/lambda"
	"github.com/aws/aws-sdk-go-v2/service/sfn"
	sfntypes "github.com/aws/aws-sdk-go-v2/service/sfn/types"
	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	verrors "github.com/pb33f/libopenapi-validator/errors"
	"github.com/pb33f/libopenapi-validator/helpers"

	"github.com/slipway-ci/slipway/agent/agenttest"
	"github.com/slipway-ci/slipway/internal/apigw"
	"github.com/slipway-ci/slipway/internal/awstest"
	"github.com/slipway-ci/slipway/internal/fleet"
	"github.com/slipway-ci/slipway/internal/lease"
	"github.com/slipway-ci/slipway/internal/logarchive"
	"github.com/slipway-ci/slipway/internal/metrics"
	"github.com/slipway-ci/slipway/internal/pki"
	"github.com/slipway-ci/slipway/internal/pool"
	"github.com/slipway-ci/slipway/internal/secret"
	"github.com/slipway-ci/slipway/internal/stage"
	"github.com/slipway-ci/slipway/internal/stage/record"
	"github.com/slipway-ci/slipway/internal/warm"
)

// executions records StartExecution calls and answers a name used before
// as Step Functions does (it keeps a name for 90 days): the same execution
// while it runs and the input is the same, ExecutionAlreadyExists once it
// ended or for another input. Step Functions' part is tested end to end on
// the real ASL engine (internal/local); here it is the API's request that
// matters.
type executions struct {
	mu     sync.Mutex
	calls  []sfn.StartExecutionInput
	inputs map[string]string // by name
	ended  map[string]bool
	// failing is how many starts to come fail as a throttled Step Functions
	// would.
	failing int
}

func (e *executions) StartExecution(_ context.Context, in *sfn.StartExecutionInput, _ ...func(*sfn.Options)) (*sfn.StartExecutionOutput, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls = append(e.calls, *in)
	if e.failing > 0 {
		e.failing--
		return nil, &sfntypes.ExecutionLimitExceeded{Message: aws.String("throttled")}
	}
	name, input := aws.ToString(in.Name), aws.ToString(in.Input)
	if before, used := e.inputs[name]; used && (e.ended[name] || before != input) {
		return nil, &sfntypes.ExecutionAlreadyExists{Message: aws.String("Execution Already Exists: " + name)}
	}
	if e.inputs == nil {
		e.inputs = map[string]string{}
	}
	e.inputs[name] = input
	return &sfn.StartExecutionOutput{ExecutionArn: aws.String("arn:aws:states:us-east-1:000000000000:execution:s:" + name)}, nil
}

// DescribeExecution answers as Step Functions does: running until ended,
// ExecutionDoesNotExist for a name never started.
func (e *executions) DescribeExecution(_ context.Context, in *sfn.DescribeExecutionInput, _ ...func(*sfn.Options)) (*sfn.DescribeExecutionOutput, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	arn := aws.ToString(in.ExecutionArn)
	name := arn[strings.LastIndex(arn, ":")+1:]
	if _, ok := e.inputs[name]; !ok {
		return nil, &sfntypes.ExecutionDoesNotExist{Message: aws.String("Execution Does Not Exist: '" + arn + "'")}
	}
	out := &sfn.DescribeExecutionOutput{ExecutionArn: in.ExecutionArn, Status: sfntypes.ExecutionStatusRunning}
	if e.ended[name] {
		out.Status, out.StopDate = sfntypes.ExecutionStatusSucceeded, aws.Time(time.Now().Add(-time.Hour))
	}
	return out, nil
}

// end ends the execution of that name.
func (e *executions) end(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ended == nil {
		e.ended = map[string]bool{}
	}
	e.ended[name] = true
}

func (e *executions) started() []sfn.StartExecutionInput {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]sfn.StartExecutionInput(nil), e.calls...)
}

// invoker records asynchronous invocations.
type invoker struct {
	mu    sync.Mutex
	calls []lambda.InvokeInput
}

func (i *invoker) Invoke(_ context.Context, in *lambda.InvokeInput, _ ...func(*lambda.Options)) (*lambda.InvokeOutput, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.calls = append(i.calls, *in)
	return &lambda.InvokeOutput{StatusCode: 202}, nil
}

func (i *invoker) invoked() []lambda.InvokeInput {
	i.mu.Lock()
	defer i.mu.Unlock()
	return append([]lambda.InvokeInput(nil), i.calls...)
}

type env struct {
	db      *dynamodb.Client
	deps    *stage.Deps
	api     *stage.API
	store   *lease.Store
	stages  *record.Store
	keeper  *warm.Keeper
	execs   *executions
	invoker *invoker
	metrics *bytes.Buffer
	spec    validator.Validator
	// caller is whom API Gateway authenticated for each call (callerA
	// unless a test says otherwise).
	caller string
	// serving counts the calls the API is serving now.
	serving *atomic.Int32
}

// Callers of the tests: two delegates' roles, sessions of them, and an
// operator.
const (
	callerA        = "arn:aws:iam::123456789012:role/delegate-a"
	callerASession = "arn:aws:sts::123456789012:assumed-role/delegate-a/i-0123456789abcdef0"
	callerB        = "arn:aws:iam::123456789012:role/delegate-b"
	callerOperator = "arn:aws:iam::123456789012:role/platform/slipway-operator"
)

// as is e calling as caller.
func (e *env) as(caller string) *env {
	other := *e
	other.caller = caller
	return &other
}

// tune changes the deployment's settings; the handlers made after it, and
// the API, take them.
func (e *env) tune(f func(*stage.Settings)) {
	f(&e.deps.Settings)
	e.api = stage.NewAPI(e.deps)
}

// newEnv is a deployment on DynamoDB Local and local-kms, its VMs agent
// processes (fleet.Local).
func newEnv(t *testing.T, pools ...pool.Pool) *env {
	t.Helper()
	db, table := awstest.Table(t)
	kms := awstest.KMS(t)
	store := &lease.Store{DB: db, Table: table}
	stages := &record.Store{DB: db, Table: table}
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.NewCA(key, "stage test CA", 24*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	identity := &pki.Identity{CA: ca}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	vms := &fleet.Local{Dir: t.TempDir(), AgentPath: agenttest.BuildAgent(t)}
	t.Cleanup(func() { _ = vms.Close() })
	out := &bytes.Buffer{}
	emitter := &metrics.Emitter{W: out, Deployment: "test"}
	keeper := &warm.Keeper{
		Books: store, Fleet: vms, Pools: pools, CA: ca,
		Prober: &warm.AgentProber{RootCAs: roots, Certificate: identity.Certificate}, Metrics: emitter,
	}
	secretsKey := awstest.SymmetricKey(t, kms)
	e := &env{serving: &atomic.Int32{}, db: db, store: store, stages: stages, keeper: keeper, execs: &executions{}, invoker: &invoker{}, metrics: out, caller: callerA}
	e.deps = &stage.Deps{
		Stages: stages, VMs: store, Keeper: keeper, Pools: pools,
		Sealer: &secret.Sealer{KMS: kms, KeyID: secretsKey}, Opener: &secret.Opener{KMS: kms},
		Agents:     &stage.Agents{Roots: roots, Certificate: identity.Certificate},
		Executions: e.execs, StateMachineARN: "arn:aws:states:us-east-1:000000000000:stateMachine:s",
		Invoker: e.invoker, CleanupFunction: "cleanup", RefillFunction: "refill", Logs: &logarchive.Dir{Root: t.TempDir()},
		Metrics: emitter, Settings: stage.Settings{AcquirePoll: time.Second, AgentGrace: 2 * time.Second, Operators: []string{"arn:aws:iam::123456789012:role/platform/*"}},
	}
	e.api = stage.NewAPI(e.deps)
	doc, err := libopenapi.NewDocument(stage.OpenAPI)
	if err != nil {
		t.Fatal(err)
	}
	v, errs := validator.NewValidator(doc)
	if len(errs) > 0 {
		t.Fatalf("the OpenAPI document: %v", errs)
	}
	if ok, verrs := v.ValidateDocument(); !ok {
		t.Fatalf("the OpenAPI document does not validate: %v", verrs)
	}
	e.spec = v
	return e
}

// expire deletes a stage's records, as DynamoDB's TTL does once they are
// past their retention (the stage's listing in its hour stays).
func (e *env) expire(t *testing.T, rec *record.Records) {
	t.Helper()
	out, err := e.db.Query(t.Context(), &dynamodb.QueryInput{
		TableName:                 aws.String(e.store.Table),
		KeyConditionExpression:    aws.String("pk = :pk"),
		ExpressionAttributeValues: map[string]dbtypes.AttributeValue{":pk": &dbtypes.AttributeValueMemberS{Value: "STAGE#" + rec.Stage.ID}},
	})
	if err != nil || len(out.Items) < 1+len(rec.Groups) {
		t.Fatalf("records of stage %s: %d items, %v", rec.Stage.ID, len(out.Items), err)
	}
	for _, item := range out.Items {
		key := map[string]dbtypes.AttributeValue{"pk": item["pk"], "sk": item["sk"]}
		if _, err := e.db.DeleteItem(t.Context(), &dynamodb.DeleteItemInput{TableName: aws.String(e.store.Table), Key: key}); err != nil {
			t.Fatal(err)
		}
	}
}

// warmUp refills until the pool has n idle VMs.
func (e *env) warmUp(t *testing.T, name string, n int) {
	t.Helper()
	ctx := agenttest.Context(t)
	for {
		r, err := e.keeper.Handle(ctx, warm.Request{Pool: name})
		if err != nil {
			t.Fatal(err)
		}
		if r.Idle >= n {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// answer is one call's outcome.
type answer struct {
	status int
	header http.Header
	body   []byte
}

func (a answer) decode(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(a.body, v); err != nil {
		t.Fatalf("decode %s: %v", a.body, err)
	}
}

// errorMessage is the answer's error message ("" for none).
func (a answer) errorMessage() string {
	var eb stage.ErrorBody
	_ = json.Unmarshal(a.body, &eb)
	return eb.Error.Code + ": " + eb.Error.Message
}

// do calls the API. Every answer is checked against the OpenAPI document;
// the request too when valid says it should be one the document allows.
func (e *env) do(t *testing.T, method, path string, body any, valid bool) answer {
	t.Helper()
	var data []byte
	switch b := body.(type) {
	case nil:
	case string:
		data = []byte(b)
	default:
		var err error
		if data, err = json.Marshal(b); err != nil {
			t.Fatal(err)
		}
	}
	newReq := func() *http.Request {
		req := httptest.NewRequest(method, "http://127.0.0.1:8079"+path, bytes.NewReader(data))
		if e.caller != "" {
			req = req.WithContext(apigw.WithCaller(req.Context(), e.caller))
		}
		if data != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		return req
	}
	if valid {
		if ok, errs := e.spec.ValidateHttpRequest(newReq()); !ok {
			t.Errorf("%s %s: the request does not fit the OpenAPI document: %v", method, path, errs)
		}
	}
	rec := httptest.NewRecorder()
	e.serving.Add(1)
	e.api.ServeHTTP(rec, newReq())
	e.serving.Add(-1)
	resp := rec.Result()
	got, _ := io.ReadAll(resp.Body)
	resp.Body = io.NopCloser(bytes.NewReader(got))
	if ok, errs := e.spec.ValidateHttpResponse(newReq(), resp); !ok && !undocumented(errs, resp.StatusCode, got) {
		var msgs []string
		for _, err := range errs {
			msgs = append(msgs, err.Error())
		}
		t.Errorf("%s %s: answer %d %s does not fit the OpenAPI document:\n%s", method, path, resp.StatusCode, got, strings.Join(msgs, "\n"))
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: got}
}

func testPool(name string, minIdle, maxInstances int) pool.Pool {
	return pool.Pool{
		Name: name, OS: "linux", Arch: "amd64", InstanceTypes: []string{"local.agent"},
		AMI: "ami-00000000000000000", Subnets: []string{"subnet-00000000"}, SecurityGroups: []string{"sg-00000000"},
		MinIdle: minIdle, MaxInstances: maxInstances,
		MaxVMLifetime: pool.Duration{Duration: time.Hour}, BootBudget: pool.Duration{Duration: time.Minute},
	}
}

// undocumented tells the answer to a path or method the document does not
// have (which it cannot check): a 404 or 405 with an error body.
func undocumented(errs []*verrors.ValidationError, status int, body []byte) bool {
	var eb stage.ErrorBody
	if (status != http.StatusNotFound && status != http.StatusMethodNotAllowed) || json.Unmarshal(body, &eb) != nil || eb.Error.Code == "" {
		return false
	}
	for _, err := range errs {
		if err.ValidationType != helpers.PathValidation {
			return false
		}
	}
	return true
}
