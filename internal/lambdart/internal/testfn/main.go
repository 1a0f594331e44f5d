// Command testfn is a function bootstrap built with aws-lambda-go, for
// the tests of package lambdart: it counts its invocations in memory and
// answers with the count, and on request fails, panics, sleeps, allocates memory,
// exits, or answers with a large payload.
package main

import (
	"context"
	"errors"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"
)

// request is what a test asks of the function.
type request struct {
	Error   string `json:"error,omitempty"`
	SleepMS int    `json:"sleep_ms,omitempty"`
	AllocMB int    `json:"alloc_mb,omitempty"`
	Exit    *int   `json:"exit,omitempty"`
	BigMB   int    `json:"big_mb,omitempty"`
	Print   string `json:"print,omitempty"`
	Panic   string `json:"panic,omitempty"`
}

// response is the function's answer.
type response struct {
	Count     int    `json:"count"`
	PID       int    `json:"pid"`
	RequestID string `json:"request_id"`
	ARN       string `json:"arn"`
	Big       string `json:"big,omitempty"`
	Env       string `json:"env,omitempty"`
	// AppTitle and Custom are from the invocation's client context.
	AppTitle string            `json:"app_title,omitempty"`
	Custom   map[string]string `json:"custom,omitempty"`
}

func main() {
	count := 0
	var keep [][]byte
	lambda.Start(func(ctx context.Context, req request) (*response, error) {
		count++
		lc, _ := lambdacontext.FromContext(ctx)
		if req.Print != "" {
			os.Stdout.WriteString(req.Print + "\n")
		}
		if req.Panic != "" {
			panic(req.Panic)
		}
		if req.Error != "" {
			return nil, errors.New(req.Error)
		}
		if req.SleepMS > 0 {
			time.Sleep(time.Duration(req.SleepMS) * time.Millisecond)
		}
		if req.Exit != nil {
			os.Exit(*req.Exit)
		}
		for i := 0; i < req.AllocMB; i++ {
			b := make([]byte, 1<<20)
			for j := range b {
				b[j] = byte(j)
			}
			keep = append(keep, b)
		}
		r := &response{Count: count, PID: os.Getpid(), Env: os.Getenv("TEST_ENV")}
		if lc != nil {
			r.RequestID, r.ARN = lc.AwsRequestID, lc.InvokedFunctionArn
			r.AppTitle, r.Custom = lc.ClientContext.Client.AppTitle, lc.ClientContext.Custom
		}
		if req.BigMB > 0 {
			r.Big = strings.Repeat("x", req.BigMB<<20)
		}
		return r, nil
	})
}
