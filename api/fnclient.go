package api

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Lambda's Invoke API headers, which the servers answer invocations with
// (and read the invocation type and log type from).
const (
	InvocationTypeHeader  = "X-Amz-Invocation-Type"
	LogTypeHeader         = "X-Amz-Log-Type"
	ClientContextHeader   = "X-Amz-Client-Context"
	FunctionErrorHeader   = "X-Amz-Function-Error"
	LogResultHeader       = "X-Amz-Log-Result"
	ExecutedVersionHeader = "X-Amz-Executed-Version"
	RequestIDHeader       = "X-Amzn-RequestId"
	// LogTypeTail asks for the invocation's log tail in LogResultHeader.
	LogTypeTail = "Tail"
	LogTypeNone = "None"
)

// functionPath is the path of function name of cluster, with rest
// appended ("", "/status", "/dlq", ...).
func functionPath(cluster, name, rest string) string {
	return "/v1/clusters/" + esc(cluster) + "/functions/" + esc(name) + rest
}

// DeployFunction creates function name in cluster, or adds a version to
// it, from d; the answer's Latest is the new version. d.Cluster is set to
// cluster.
func (c *Client) DeployFunction(ctx context.Context, cluster, name string, d *FunctionDeploy) (*Function, error) {
	body := *d
	body.Cluster = cluster
	var f Function
	_, err := c.Do(ctx, "PUT", functionPath(cluster, name, ""), nil, &body, &f)
	return &f, err
}

// Functions lists the functions the caller may see, only those of cluster
// when it is not empty, and only those called name when it is not empty.
func (c *Client) Functions(ctx context.Context, cluster, name string) ([]*Function, error) {
	v := url.Values{}
	if cluster != "" {
		v.Set("cluster", cluster)
	}
	if name != "" {
		v.Set("name", name)
	}
	var fs []*Function
	_, err := c.Do(ctx, "GET", "/v1/functions", v, nil, &fs)
	return fs, err
}

// Function returns one function with its versions.
func (c *Client) Function(ctx context.Context, cluster, name string) (*Function, error) {
	var f Function
	_, err := c.Do(ctx, "GET", functionPath(cluster, name, ""), nil, nil, &f)
	return &f, err
}

// FunctionStatus returns a function with its sandboxes and counters.
func (c *Client) FunctionStatus(ctx context.Context, cluster, name string) (*FunctionStatus, error) {
	var s FunctionStatus
	_, err := c.Do(ctx, "GET", functionPath(cluster, name, "/status"), nil, nil, &s)
	return &s, err
}

// DeleteFunction deletes a function and all its versions.
func (c *Client) DeleteFunction(ctx context.Context, cluster, name string) error {
	_, err := c.Do(ctx, "DELETE", functionPath(cluster, name, ""), nil, nil, nil)
	return err
}

// InvokeOptions say how to invoke a function.
type InvokeOptions struct {
	// Version is the version to run; 0 runs the latest.
	Version int
	// Type is InvokeRequestResponse (when empty), InvokeEvent or
	// InvokeDryRun.
	Type string
	// Tail asks for the last LogTailBytes of the invocation's log.
	Tail bool
	// Payload is the event, a JSON document (empty: none).
	Payload []byte
	// ClientContext is a JSON object for the function's context
	// (synchronous invocations only); it travels base64-encoded in
	// ClientContextHeader.
	ClientContext []byte
}

// InvokeFunction invokes a function as Lambda's Invoke API does. A
// function error is not an error here: it comes back with FunctionError
// set and the error document as Payload. Errors are the service's (bad
// request, no such function, throttling, ...) or the connection's.
func (c *Client) InvokeFunction(ctx context.Context, cluster, name string, o *InvokeOptions) (*FunctionResult, error) {
	if o == nil {
		o = &InvokeOptions{}
	}
	var v url.Values
	if o.Version != 0 {
		v = url.Values{"version": {strconv.Itoa(o.Version)}}
	}
	typ := o.Type
	if typ == "" {
		typ = InvokeRequestResponse
	}
	logType := LogTypeNone
	if o.Tail {
		logType = LogTypeTail
	}
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set(InvocationTypeHeader, typ)
	h.Set(LogTypeHeader, logType)
	if len(o.ClientContext) > 0 {
		h.Set(ClientContextHeader, base64.StdEncoding.EncodeToString(o.ClientContext))
	}
	// A nil body is sent as an empty one: Lambda takes that as no event.
	resp, err := c.sendRaw(ctx, "POST", functionPath(cluster, name, "/invocations"), v, o.Payload, h, true)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	payload, err := io.ReadAll(io.LimitReader(resp.Body, MaxInvokePayload+1))
	if err != nil {
		return nil, fmt.Errorf("reading the answer of function %s: %w", name, err)
	}
	if len(payload) > MaxInvokePayload {
		return nil, fmt.Errorf("function %s answered more than %d bytes, the largest payload", name, MaxInvokePayload)
	}
	r := &FunctionResult{
		RequestID:     resp.Header.Get(RequestIDHeader),
		StatusCode:    resp.StatusCode,
		FunctionError: resp.Header.Get(FunctionErrorHeader),
		Version:       resp.Header.Get(ExecutedVersionHeader),
		Payload:       payload,
	}
	if lr := resp.Header.Get(LogResultHeader); lr != "" {
		tail, err := base64.StdEncoding.DecodeString(lr)
		if err != nil {
			return r, fmt.Errorf("function %s: the %s header is not base64: %w", name, LogResultHeader, err)
		}
		r.LogTail = string(tail)
	}
	return r, nil
}

// FunctionLogs returns the invocation logs of a function, sorted by
// start: those that started at or after since (all when since is zero),
// and only the invocation requestID's when it is not empty.
func (c *Client) FunctionLogs(ctx context.Context, cluster, name string, since time.Time, requestID string) ([]*FunctionLogRecord, error) {
	v := url.Values{}
	if !since.IsZero() {
		v.Set("since", since.UTC().Format(time.RFC3339Nano))
	}
	if requestID != "" {
		v.Set("request_id", requestID)
	}
	var recs []*FunctionLogRecord
	_, err := c.Do(ctx, "GET", functionPath(cluster, name, "/logs"), v, nil, &recs)
	return recs, err
}

// DeadLetters lists a function's dead-letter queue.
func (c *Client) DeadLetters(ctx context.Context, cluster, name string) ([]*DeadLetter, error) {
	var dl []*DeadLetter
	_, err := c.Do(ctx, "GET", functionPath(cluster, name, "/dlq"), nil, nil, &dl)
	return dl, err
}

// DeadLetter returns one dead letter of a function, payload included.
func (c *Client) DeadLetter(ctx context.Context, cluster, name, id string) (*DeadLetter, error) {
	var dl DeadLetter
	_, err := c.Do(ctx, "GET", functionPath(cluster, name, "/dlq/"+esc(id)), nil, nil, &dl)
	return &dl, err
}

// RedriveDeadLetters submits dead letters of a function again as Event
// invocations: those of ids, or all of them when ids is empty.
func (c *Client) RedriveDeadLetters(ctx context.Context, cluster, name string, ids []string) (*RedriveResult, error) {
	var r RedriveResult
	_, err := c.Do(ctx, "POST", functionPath(cluster, name, "/dlq/redrive"), nil, &Redrive{IDs: ids}, &r)
	return &r, err
}
