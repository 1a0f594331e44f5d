// Command hello is an example Shoal function: an unmodified aws-lambda-go
// handler, built as the bundle's bootstrap (see ../README.md).
//
// It takes {"name": "..."} and answers {"greeting": "Hello, NAME",
// "calls": N}, where N counts the invocations this process has served: it
// grows while the sandbox is reused (warm) and starts again at 1 after a
// cold start. For demonstrations it also takes "sleep_ms" (sleep that
// long first, to show timeouts and concurrency) and "alloc_mib" (allocate
// and touch that many MiB, to show the memory limit), and fails with a
// function error when the name is "error".
//
// Build it with:
//
//	CGO_ENABLED=0 go build -o bootstrap ./examples/functions/hello-go
package main

import (
	"context"
	"fmt"
	"log"
	"sync/atomic"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
)

// event is the handler's input.
type event struct {
	Name     string `json:"name"`
	SleepMS  int    `json:"sleep_ms,omitempty"`
	AllocMiB int    `json:"alloc_mib,omitempty"`
}

// response is the handler's output.
type response struct {
	Greeting string `json:"greeting"`
	Calls    int64  `json:"calls"`
}

// BadNameError is the function error of a name the function refuses;
// Lambda reports its type name as the errorType.
type BadNameError struct{ Name string }

func (e *BadNameError) Error() string {
	return fmt.Sprintf("hello refuses the name %q, as asked", e.Name)
}

// greeter counts the invocations its process has served.
type greeter struct {
	calls atomic.Int64
}

// handle serves one invocation.
func (g *greeter) handle(ctx context.Context, e event) (*response, error) {
	n := g.calls.Add(1)
	log.Printf("call %d of this process: name %q", n, e.Name)
	if e.SleepMS > 0 {
		select {
		case <-time.After(time.Duration(e.SleepMS) * time.Millisecond):
		case <-ctx.Done(): // past the function's timeout
			return nil, ctx.Err()
		}
	}
	if e.AllocMiB > 0 {
		touchMemory(e.AllocMiB)
	}
	if e.Name == "error" {
		return nil, &BadNameError{Name: e.Name}
	}
	name := e.Name
	if name == "" {
		name = "world"
	}
	return &response{Greeting: "Hello, " + name, Calls: n}, nil
}

// touchMemory allocates mib MiB and writes to every page, so that the
// memory is really used (and the sandbox's limit, if lower, is hit).
func touchMemory(mib int) {
	b := make([]byte, mib<<20)
	for i := 0; i < len(b); i += 4096 {
		b[i] = 1
	}
	log.Printf("touched %d MiB", mib)
}

func main() {
	log.SetFlags(0)
	lambda.Start((&greeter{}).handle)
}
