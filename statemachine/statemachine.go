// Package statemachine holds the Amazon States Language definition of a
// stage (stage.asl.json) and the functions its Tasks call: their names, the
// placeholders that stand for their ARNs, and their timeouts. The CDK app
// substitutes the placeholders at deploy time, `slipway local` before it hands
// the file to the local ASL engine; both read the timeouts from here, so every
// Task's TimeoutSeconds can be checked against its function's.
package statemachine

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Definition is stage.asl.json as written, placeholders and all.
//
//go:embed stage.asl.json
var Definition []byte

// Function is a Lambda function the state machine or the schedule invokes.
type Function struct {
	// Name is the function's short name: its folder under functions/.
	Name string
	// Placeholder stands for the function's ARN in the definition ("" for
	// the functions no Task calls).
	Placeholder string
	// Timeout is the function's own timeout. A Task's TimeoutSeconds is
	// longer, because a Step Functions timeout never stops a running Lambda.
	Timeout time.Duration
	// MemoryMB is the function's memory size, which Lambda bills by: the
	// handlers mostly wait on the network, and 128 MB holds them.
	MemoryMB int
	// Reserved is the function's reserved concurrency (0: none): what it
	// may always run, and at most. Cleanup and refill must run whatever
	// else does (a VM not released is paid for); the API's long-polls must
	// not take the account's concurrency from init, rungroup and cleanup.
	Reserved int
}

// The functions, by name.
const (
	Init     = "init"
	RunGroup = "rungroup"
	Cleanup  = "cleanup"
	API      = "api"
	Refill   = "refill"
)

// Functions lists every function of a deployment.
var Functions = []Function{
	{Name: Init, Placeholder: "InitFunctionArn", Timeout: 60 * time.Second, MemoryMB: 128},
	// RunGroup long-polls the agent for up to a minute, then records results.
	{Name: RunGroup, Placeholder: "RunGroupFunctionArn", Timeout: 90 * time.Second, MemoryMB: 128},
	{Name: Cleanup, Placeholder: "CleanupFunctionArn", Timeout: 60 * time.Second, MemoryMB: 128, Reserved: 20},
	// API Gateway gives up on an integration after 29 s. Its reserve is a
	// cap too: the deployment's apiConcurrency sets it.
	{Name: API, Timeout: 29 * time.Second, MemoryMB: 128, Reserved: 200},
	// Refill launches and probes many VMs at once, and reads every pool;
	// one a minute, and one a release asks for.
	{Name: Refill, Timeout: 5 * time.Minute, MemoryMB: 256, Reserved: 2},
}

// Lookup returns the function named name.
func Lookup(name string) (Function, bool) {
	for _, f := range Functions {
		if f.Name == name {
			return f, true
		}
	}
	return Function{}, false
}

var placeholder = regexp.MustCompile(`\$\{([A-Za-z0-9]+)\}`)

// Substitute returns the definition with each placeholder replaced by the ARN
// of its function (arns by function name). A placeholder without an ARN is an
// error, so no definition with a hole in it is ever deployed.
func Substitute(arns map[string]string) ([]byte, error) {
	byPlaceholder := map[string]string{}
	for _, f := range Functions {
		if f.Placeholder != "" {
			byPlaceholder[f.Placeholder] = arns[f.Name]
		}
	}
	var missing []string
	out := placeholder.ReplaceAllFunc(Definition, func(m []byte) []byte {
		name := string(placeholder.FindSubmatch(m)[1])
		arn := byPlaceholder[name]
		if arn == "" {
			missing = append(missing, name)
			return m
		}
		quoted, _ := json.Marshal(arn)
		return quoted[1 : len(quoted)-1]
	})
	if len(missing) > 0 {
		return nil, fmt.Errorf("state machine: no ARN for %s", strings.Join(missing, ", "))
	}
	return out, nil
}

// Shim is statemachine/local/shim.cjs: the local Step Functions that
// `slipway local` runs on Node.
//
//go:embed local/shim.cjs
var Shim []byte
