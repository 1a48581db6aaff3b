package localaws

import (
	"context"
	"reflect"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/smithy-go/middleware"
)

// Capacity counts the request units a DynamoDB client's calls consume, as
// DynamoDB Local reports them (ReturnConsumedCapacity TOTAL on every call
// that takes it): what an on-demand table would bill for the same calls.
type Capacity struct {
	mu          sync.Mutex
	read, write float64
	calls       map[string]int
}

// Totals are the read and write request units counted so far, and the
// calls by operation.
func (c *Capacity) Totals() (read, write float64, calls map[string]int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	calls = make(map[string]int, len(c.calls))
	for k, v := range c.calls {
		calls[k] = v
	}
	return c.read, c.write, calls
}

// Option adds the counting to a client's options.
func (c *Capacity) Option(o *dynamodb.Options) {
	o.APIOptions = append(o.APIOptions, func(stack *middleware.Stack) error {
		return stack.Initialize.Add(middleware.InitializeMiddlewareFunc("SlipwayCapacity", c.count), middleware.After)
	})
}

func (c *Capacity) count(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
	// Inputs and outputs differ per operation; the fields share names.
	if f := field(in.Parameters, "ReturnConsumedCapacity"); f.IsValid() && f.CanSet() {
		f.Set(reflect.ValueOf(types.ReturnConsumedCapacityTotal))
	}
	out, md, err := next.HandleInitialize(ctx, in)
	op := middleware.GetOperationName(ctx)
	units := 0.0
	if err == nil {
		switch cc := field(out.Result, "ConsumedCapacity"); {
		case !cc.IsValid():
		case cc.Kind() == reflect.Slice:
			for i := range cc.Len() {
				units += capacityUnits(cc.Index(i).Addr().Interface())
			}
		default:
			units = capacityUnits(cc.Interface())
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.calls == nil {
		c.calls = map[string]int{}
	}
	c.calls[op]++
	if strings.HasPrefix(op, "Get") || strings.HasPrefix(op, "BatchGet") || strings.HasPrefix(op, "TransactGet") || op == "Query" || op == "Scan" {
		c.read += units
	} else {
		c.write += units
	}
	return out, md, err
}

func field(v any, name string) reflect.Value {
	r := reflect.ValueOf(v)
	if r.Kind() != reflect.Pointer || r.IsNil() || r.Elem().Kind() != reflect.Struct {
		return reflect.Value{}
	}
	return r.Elem().FieldByName(name)
}

func capacityUnits(v any) float64 {
	if cc, ok := v.(*types.ConsumedCapacity); ok && cc != nil && cc.CapacityUnits != nil {
		return *cc.CapacityUnits
	}
	return 0
}
