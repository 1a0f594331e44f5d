package invoke

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/httpapi"
	"github.com/shoal-dev/shoal/internal/state"
)

// Routes registers the Lambda Invoke API (signed with SigV4 or a bearer
// token) and Shoal's invoke route.
func (v *Invoker) Routes(r *httpapi.Router) {
	r.Signed("POST /2015-03-31/functions/{name}/invocations", v.handleLambdaInvoke)
	r.TenantRead("POST /v1/clusters/{cluster}/functions/{name}/invocations", v.handleShoalInvoke)
}

// errWriter renders an error in one of the two API styles.
type errWriter func(w http.ResponseWriter, err error)

// target is a function named by a request: the cluster ("" when the
// name did not say), the name and the qualifier ("" for none).
type target struct {
	cluster, name, qualifier string
}

// parseFunctionName reads Lambda's FunctionName forms: NAME, NAME:QUAL,
// CLUSTER:function:NAME[:QUAL] (a partial ARN whose account is the
// cluster) and arn:PARTITION:lambda:REGION:CLUSTER:function:NAME[:QUAL].
func parseFunctionName(s string) (target, error) {
	parts := strings.Split(s, ":")
	var t target
	switch {
	case len(parts) == 1:
		t.name = parts[0]
	case len(parts) == 2:
		t.name, t.qualifier = parts[0], parts[1]
	case (len(parts) == 3 || len(parts) == 4) && parts[1] == "function":
		t.cluster, t.name = parts[0], parts[2]
		if len(parts) == 4 {
			t.qualifier = parts[3]
		}
	case (len(parts) == 7 || len(parts) == 8) && parts[0] == "arn" && parts[2] == "lambda" && parts[5] == "function":
		t.cluster, t.name = parts[4], parts[6]
		if len(parts) == 8 {
			t.qualifier = parts[7]
		}
	default:
		return t, fmt.Errorf("%w: FunctionName %q is not NAME, NAME:VERSION, CLUSTER:function:NAME[:VERSION] or arn:aws:lambda:REGION:CLUSTER:function:NAME[:VERSION]",
			api.ErrInvalid, s)
	}
	if err := api.ValidateFunctionName("FunctionName", t.name); err != nil {
		return t, err
	}
	if len(parts) > 2 && t.cluster == "" {
		return t, fmt.Errorf("%w: FunctionName %q names no cluster (the ARN's account)", api.ErrInvalid, s)
	}
	if (len(parts) == 2 || len(parts) == 4 || len(parts) == 8) && t.qualifier == "" {
		return t, fmt.Errorf("%w: FunctionName %q ends with an empty qualifier", api.ErrInvalid, s)
	}
	return t, nil
}

// parseQualifier turns a qualifier into a version: 0 for "" and $LATEST.
func parseQualifier(fn *api.Function, q string) (int, error) {
	if q == "" || q == "$LATEST" {
		return 0, nil
	}
	n, err := strconv.Atoi(q)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%w: function %s of cluster %s has no version %q (versions are numbers; aliases are not supported)",
			state.ErrNotFound, fn.Name, fn.Cluster, q)
	}
	return n, nil
}

// handleLambdaInvoke serves Lambda's Invoke.
func (v *Invoker) handleLambdaInvoke(w http.ResponseWriter, r *http.Request) {
	werr := errWriter(httpapi.WriteLambdaErr)
	body, ok := v.readPayload(w, r, werr)
	if !ok {
		return
	}
	p, ok := httpapi.PrincipalOf(r)
	if !ok {
		var serr *sigError
		p, serr = v.verifySignature(r, body)
		if serr != nil {
			if v.cfg.Refused != nil {
				v.cfg.Refused("signature", serr.reason)
			}
			werr(w, serr.err)
			return
		}
	}
	t, err := parseFunctionName(r.PathValue("name"))
	if err != nil {
		werr(w, err)
		return
	}
	if q := r.URL.Query().Get("Qualifier"); q != "" {
		if t.qualifier != "" && t.qualifier != q {
			werr(w, fmt.Errorf("%w: the qualifier %q in FunctionName does not match Qualifier %q", api.ErrInvalid, t.qualifier, q))
			return
		}
		t.qualifier = q
	}
	fn, err := v.resolve(p, t)
	if err != nil {
		werr(w, err)
		return
	}
	v.serve(w, r, fn, t.qualifier, body, werr)
}

// handleShoalInvoke serves POST /v1/clusters/{cluster}/functions/{name}/invocations?version=N.
func (v *Invoker) handleShoalInvoke(w http.ResponseWriter, r *http.Request) {
	werr := errWriter(httpapi.WriteErr)
	p, _ := httpapi.PrincipalOf(r)
	t := target{cluster: r.PathValue("cluster"), name: r.PathValue("name"), qualifier: r.URL.Query().Get("version")}
	if err := api.ValidateFunctionName("name", t.name); err != nil {
		werr(w, err)
		return
	}
	body, ok := v.readPayload(w, r, werr)
	if !ok {
		return
	}
	fn, err := v.resolve(p, t)
	if err != nil {
		werr(w, err)
		return
	}
	v.serve(w, r, fn, t.qualifier, body, werr)
}

// readPayload reads the request body, refusing one over
// api.MaxInvokePayload without reading it all.
func (v *Invoker) readPayload(w http.ResponseWriter, r *http.Request, werr errWriter) ([]byte, bool) {
	tooLarge := func() ([]byte, bool) {
		werr(w, fmt.Errorf("%w: the request payload is larger than %d bytes, the largest an invocation takes",
			httpapi.ErrTooLarge, api.MaxInvokePayload))
		return nil, false
	}
	if r.ContentLength > api.MaxInvokePayload {
		return tooLarge()
	}
	var buf []byte
	if r.ContentLength > 0 {
		buf = make([]byte, 0, r.ContentLength+1)
	}
	body := http.MaxBytesReader(w, r.Body, api.MaxInvokePayload)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, true
		}
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return tooLarge()
			}
			werr(w, fmt.Errorf("%w: reading the request payload: %v", api.ErrInvalid, err))
			return nil, false
		}
	}
}

// resolve finds the function a request names, within what p may see.
func (v *Invoker) resolve(p httpapi.Principal, t target) (*api.Function, error) {
	if t.cluster == "" && !p.Operator() {
		t.cluster = p.Cluster
	}
	if t.cluster != "" {
		if !p.Sees(t.cluster) {
			return nil, fmt.Errorf("%w: the key of cluster %s may not invoke functions of cluster %s", httpapi.ErrForbidden, p.Cluster, t.cluster)
		}
		return v.cfg.Catalog.Function(t.cluster, t.name)
	}
	fns := v.cfg.Catalog.FunctionsNamed(t.name)
	switch len(fns) {
	case 0:
		return nil, fmt.Errorf("%w: function not found: %s", state.ErrNotFound, t.name)
	case 1:
		return fns[0], nil
	}
	clusters := make([]string, len(fns))
	for i, f := range fns {
		clusters[i] = f.Cluster
	}
	slices.Sort(clusters)
	return nil, fmt.Errorf("%w: function %s exists in clusters %s; name one as CLUSTER:function:%s",
		api.ErrInvalid, t.name, strings.Join(clusters, ", "), t.name)
}

// serve validates the invocation's version, type and payload and runs it
// as its type says.
func (v *Invoker) serve(w http.ResponseWriter, r *http.Request, fn *api.Function, qualifier string, payload []byte, werr errWriter) {
	version, err := parseQualifier(fn, qualifier)
	if err != nil {
		werr(w, err)
		return
	}
	fv := fn.Version(version)
	if fv == nil {
		werr(w, fmt.Errorf("%w: function %s of cluster %s has no version %d", state.ErrNotFound, fn.Name, fn.Cluster, version))
		return
	}
	label := fn.Cluster + "/" + fn.Name
	typ := r.Header.Get(api.InvocationTypeHeader)
	switch typ {
	case "":
		typ = api.InvokeRequestResponse
	case api.InvokeRequestResponse, api.InvokeEvent, api.InvokeDryRun:
	default:
		werr(w, fmt.Errorf("%w: X-Amz-Invocation-Type %q is not RequestResponse, Event or DryRun", api.ErrInvalid, typ))
		return
	}
	count := func(outcome string) { v.metrics.invocations.WithLabelValues(label, typ, outcome).Inc() }
	tail := false
	switch lt := r.Header.Get(api.LogTypeHeader); lt {
	case "", api.LogTypeNone:
	case api.LogTypeTail:
		tail = typ == api.InvokeRequestResponse
	default:
		count(outcomeInvalid)
		werr(w, fmt.Errorf("%w: X-Amz-Log-Type %q is not None or Tail", api.ErrInvalid, lt))
		return
	}
	clientContext, err := parseClientContext(r.Header.Get(api.ClientContextHeader))
	if err != nil {
		count(outcomeInvalid)
		werr(w, err)
		return
	}
	if len(payload) == 0 {
		// Lambda hands a function invoked without a payload an empty
		// JSON object.
		payload = []byte("{}")
	} else if !json.Valid(payload) {
		count(outcomeInvalid)
		werr(w, fmt.Errorf("%w: could not parse request body into json: the payload must be a JSON document", httpapi.ErrInvalidContent))
		return
	}
	id := v.newRequestID()
	w.Header().Set(api.RequestIDHeader, id)
	switch typ {
	case api.InvokeDryRun:
		count(outcomeDryRun)
		w.WriteHeader(http.StatusNoContent)
		return
	case api.InvokeEvent:
		if v.cfg.Queue == nil {
			count(outcomeUnavailable)
			werr(w, fmt.Errorf("%w: this server has no queue for Event invocations", httpapi.ErrUnavailable))
			return
		}
		ev := &Event{ID: id, Cluster: fn.Cluster, Function: fn.Name, Version: version, Payload: payload,
			Retries: *fv.Config.Resolved().Retries}
		if err := v.cfg.Queue.Enqueue(r.Context(), ev); err != nil {
			count(outcomeUnavailable)
			v.log.Error("enqueue function event", "function", fn.Name, "cluster", fn.Cluster, "request", id, "err", err)
			werr(w, fmt.Errorf("%w: could not queue the event: %v", httpapi.ErrUnavailable, err))
			return
		}
		count(outcomeEnqueued)
		w.WriteHeader(http.StatusAccepted)
		return
	}

	// A client that goes away does not stop the invocation (nor does it
	// on Lambda): the function runs to its end in its sandbox, and its
	// concurrency slot stays taken until then.
	res, err := v.invoke(context.WithoutCancel(r.Context()), fn, fv,
		&Request{RequestID: id, Payload: payload, Tail: tail, ClientContext: clientContext})
	if err != nil {
		switch {
		case errors.Is(err, httpapi.ErrTooManyRequests):
			count(outcomeThrottled)
		case errors.Is(err, httpapi.ErrUnavailable):
			count(outcomeUnavailable)
		default:
			count(outcomeError)
		}
		if r.Context().Err() == nil {
			v.log.Warn("function invocation failed", "function", fn.Name, "cluster", fn.Cluster, "request", id, "err", err)
		}
		werr(w, err)
		return
	}
	h := w.Header()
	h["Content-Type"] = jsonContentType
	h[api.ExecutedVersionHeader] = []string{strconv.Itoa(fv.Version)}
	if tail {
		logTail := res.LogTail
		if len(logTail) > api.LogTailBytes {
			logTail = logTail[len(logTail)-api.LogTailBytes:]
		}
		h[api.LogResultHeader] = []string{base64.StdEncoding.EncodeToString(logTail)}
	}
	if res.FunctionError != "" {
		h[api.FunctionErrorHeader] = []string{res.FunctionError}
		count(outcomeFunctionError)
	} else {
		count(outcomeOK)
	}
	w.WriteHeader(http.StatusOK)
	w.Write(res.Payload)
}

// maxClientContext is the most X-Amz-Client-Context may hold, as on
// Lambda: 3,583 bytes of base64.
const maxClientContext = 3583

// parseClientContext reads X-Amz-Client-Context: base64 of a JSON object,
// returned decoded ("" for none). Lambda passes it to synchronous
// invocations only, and so does Shoal: an Event's is dropped.
func parseClientContext(h string) (string, error) {
	if h == "" {
		return "", nil
	}
	bad := func(why string) error {
		return fmt.Errorf("%w: %s must be a base64-encoded JSON object of at most %d bytes: %s",
			httpapi.ErrInvalidContent, api.ClientContextHeader, maxClientContext, why)
	}
	if len(h) > maxClientContext {
		return "", bad(fmt.Sprintf("it has %d bytes", len(h)))
	}
	b, err := base64.StdEncoding.DecodeString(h)
	if err != nil {
		return "", bad("it is not base64")
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(b, &obj); err != nil {
		return "", bad("it does not decode to a JSON object")
	}
	return string(b), nil
}
