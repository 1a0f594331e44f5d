package invoke

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/httpapi"
)

// handlerEnv: c1/hello (versions 1, 2), c2/hello (1), c2/solo (1); one
// agent per cluster, warm for every version.
func handlerEnv(t *testing.T, q Queue, open bool) (*testEnv, *fakeAgent, *fakeAgent) {
	a1, a2 := newFakeAgent(t, "n1", 0, 1, 2), newFakeAgent(t, "n2", 0, 1)
	cat := &fakeCatalog{
		fns: []*api.Function{
			testFunction("c1", "hello", 2, api.FunctionConfig{}),
			testFunction("c2", "hello", 1, api.FunctionConfig{}),
			testFunction("c2", "solo", 1, api.FunctionConfig{}),
		},
		agents:  map[string][]Agent{"c1": {a1.agent()}, "c2": {a2.agent()}},
		secrets: map[string]string{"operator": "op-secret", "c1": "c1-secret", "c2": "c2-secret"},
	}
	return newTestEnv(t, cat, q, open), a1, a2
}

func lambdaPath(name string) string {
	return "/2015-03-31/functions/" + url.PathEscape(name) + "/invocations"
}

// answer is what a test expects of an invocation.
type answer struct {
	Status    int
	ErrorType string // X-Amzn-ErrorType (Lambda) or the Shoal code
	Node      string
	Version   string // X-Amz-Executed-Version
}

func lambdaAnswer(resp *http.Response, body string) answer {
	a := answer{Status: resp.StatusCode, ErrorType: resp.Header.Get("X-Amzn-ErrorType"), Version: resp.Header.Get("X-Amz-Executed-Version")}
	var out struct{ Node string }
	if resp.StatusCode == 200 {
		json.Unmarshal([]byte(body), &out)
		a.Node = out.Node
	}
	return a
}

func TestFunctionNameForms(t *testing.T) {
	e, _, _ := handlerEnv(t, nil, true)
	op := map[string]string{}
	c1 := map[string]string{"Authorization": "Bearer cluster:c1"}
	for _, tc := range []struct {
		name, query string
		hdr         map[string]string
		want        answer
		msg         string // part of the error message
	}{
		{"solo", "", op, answer{Status: 200, Node: "n2", Version: "1"}, ""},
		{"hello", "", op, answer{Status: 400, ErrorType: "InvalidParameterValueException"}, "clusters c1, c2; name one as CLUSTER:function:hello"},
		{"hello", "", c1, answer{Status: 200, Node: "n1", Version: "2"}, ""},
		{"hello:1", "", c1, answer{Status: 200, Node: "n1", Version: "1"}, ""},
		{"hello", "Qualifier=1", c1, answer{Status: 200, Node: "n1", Version: "1"}, ""},
		{"hello", "Qualifier=$LATEST", c1, answer{Status: 200, Node: "n1", Version: "2"}, ""},
		{"hello:1", "Qualifier=2", c1, answer{Status: 400, ErrorType: "InvalidParameterValueException"}, "does not match"},
		{"hello:9", "", c1, answer{Status: 404, ErrorType: "ResourceNotFoundException"}, "no version 9"},
		{"hello:prod", "", c1, answer{Status: 404, ErrorType: "ResourceNotFoundException"}, "aliases are not supported"},
		{"c1:function:hello", "", op, answer{Status: 200, Node: "n1", Version: "2"}, ""},
		{"c2:function:hello", "", op, answer{Status: 200, Node: "n2", Version: "1"}, ""},
		{"c1:function:hello:1", "", op, answer{Status: 200, Node: "n1", Version: "1"}, ""},
		{"arn:aws:lambda:us-east-1:c1:function:hello", "", op, answer{Status: 200, Node: "n1", Version: "2"}, ""},
		{"arn:aws:lambda:eu-west-3:c1:function:hello:1", "", c1, answer{Status: 200, Node: "n1", Version: "1"}, ""},
		{"arn:aws:lambda:us-east-1:c2:function:hello", "", c1, answer{Status: 403, ErrorType: "AccessDeniedException"}, "may not invoke functions of cluster c2"},
		{"c2:function:solo", "", c1, answer{Status: 403, ErrorType: "AccessDeniedException"}, ""},
		{"solo", "", c1, answer{Status: 404, ErrorType: "ResourceNotFoundException"}, ""},
		{"nope", "", op, answer{Status: 404, ErrorType: "ResourceNotFoundException"}, "function not found: nope"},
		{"c1:function:nope", "", op, answer{Status: 404, ErrorType: "ResourceNotFoundException"}, ""},
		{"a:b:c", "", op, answer{Status: 400, ErrorType: "InvalidParameterValueException"}, "is not NAME"},
		{"bad name!", "", op, answer{Status: 400, ErrorType: "InvalidParameterValueException"}, "may contain only"},
		{"hello:", "", c1, answer{Status: 400, ErrorType: "InvalidParameterValueException"}, "empty qualifier"},
	} {
		t.Run(tc.name+"?"+tc.query+"/"+tc.hdr["Authorization"], func(t *testing.T) {
			p := lambdaPath(tc.name)
			if tc.query != "" {
				p += "?" + tc.query
			}
			resp, body := e.post(t, p, tc.hdr, `{"k":"v"}`)
			if diff := cmp.Diff(tc.want, lambdaAnswer(resp, body)); diff != "" {
				t.Errorf("answer (-want +got):\n%s\nbody: %s", diff, body)
			}
			if !strings.Contains(body, tc.msg) {
				t.Errorf("body %s does not contain %q", body, tc.msg)
			}
			if resp.StatusCode == 200 && resp.Header.Get("X-Amzn-Requestid") == "" {
				t.Errorf("no X-Amzn-RequestId")
			}
		})
	}
}

func TestShoalRoute(t *testing.T) {
	e, _, _ := handlerEnv(t, nil, true)
	c1 := map[string]string{"Authorization": "Bearer cluster:c1"}
	for _, tc := range []struct {
		path string
		hdr  map[string]string
		body string
		want answer
	}{
		{"/v1/clusters/c1/functions/hello/invocations", nil, `{}`, answer{Status: 200, Node: "n1", Version: "2"}},
		{"/v1/clusters/c1/functions/hello/invocations?version=1", c1, `{}`, answer{Status: 200, Node: "n1", Version: "1"}},
		{"/v1/clusters/c2/functions/hello/invocations", c1, `{}`, answer{Status: 403, ErrorType: api.CodeForbidden}},
		{"/v1/clusters/c1/functions/hello/invocations?version=5", nil, `{}`, answer{Status: 404, ErrorType: api.CodeNotFound}},
		{"/v1/clusters/c1/functions/nope/invocations", nil, `{}`, answer{Status: 404, ErrorType: api.CodeNotFound}},
		{"/v1/clusters/c1/functions/hello/invocations", nil, `not json`, answer{Status: 400, ErrorType: api.CodeInvalid}},
	} {
		t.Run(tc.path, func(t *testing.T) {
			resp, body := e.post(t, tc.path, tc.hdr, tc.body)
			got := lambdaAnswer(resp, body)
			if resp.StatusCode != 200 {
				var eb api.ErrorBody
				if err := json.Unmarshal([]byte(body), &eb); err != nil {
					t.Fatalf("error body %s is not a Shoal error: %v", body, err)
				}
				got.ErrorType = eb.Error.Code
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("answer (-want +got):\n%s\nbody: %s", diff, body)
			}
		})
	}
}

func TestInvocationTypesAndPayloads(t *testing.T) {
	q := &fakeQueue{}
	e, a1, _ := handlerEnv(t, q, true)
	path := lambdaPath("c1:function:hello")

	// Not JSON: InvalidRequestContentException.
	resp, body := e.post(t, path, nil, `{"unterminated`)
	if got := lambdaAnswer(resp, body); got.Status != 400 || got.ErrorType != "InvalidRequestContentException" {
		t.Errorf("payload not JSON: got %+v %s, want 400 InvalidRequestContentException", got, body)
	}
	// Unknown type.
	resp, body = e.post(t, path, map[string]string{"X-Amz-Invocation-Type": "Later"}, `{}`)
	if got := lambdaAnswer(resp, body); got.Status != 400 || !strings.Contains(body, `\"Later\"`) {
		t.Errorf("unknown invocation type: got %+v %s, want 400 naming it", got, body)
	}
	// DryRun validates and touches no agent.
	before, _, _ := a1.counts()
	resp, body = e.post(t, path, map[string]string{"X-Amz-Invocation-Type": "DryRun"}, `{}`)
	if resp.StatusCode != http.StatusNoContent {
		t.Errorf("DryRun: got %d %s, want 204", resp.StatusCode, body)
	}
	resp, body = e.post(t, lambdaPath("c1:function:hello:7"), map[string]string{"X-Amz-Invocation-Type": "DryRun"}, `{}`)
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("DryRun of a missing version: got %d %s, want 404", resp.StatusCode, body)
	}
	resp, _ = e.post(t, path, map[string]string{"X-Amz-Invocation-Type": "DryRun"}, `nope`)
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("DryRun of a bad payload: got %d, want 400", resp.StatusCode)
	}
	if after, _, _ := a1.counts(); after != before {
		t.Errorf("DryRun reached the agent (%d calls, was %d)", after, before)
	}
	// Event: 202, queued, empty body.
	resp, body = e.post(t, lambdaPath("c1:function:hello:1"), map[string]string{"X-Amz-Invocation-Type": "Event"}, `{"e":1}`)
	if resp.StatusCode != http.StatusAccepted || body != "" || resp.Header.Get("X-Amzn-Requestid") == "" {
		t.Errorf("Event: got %d %q id %q, want 202, empty body and a request id", resp.StatusCode, body, resp.Header.Get("X-Amzn-Requestid"))
	}
	want := []*Event{{ID: resp.Header.Get("X-Amzn-Requestid"), Cluster: "c1", Function: "hello", Version: 1, Payload: []byte(`{"e":1}`), Retries: api.DefaultAsyncRetries}}
	if diff := cmp.Diff(want, q.events); diff != "" {
		t.Errorf("queued events (-want +got):\n%s", diff)
	}
	// Event without a queue: 503 ServiceException.
	e2, _, _ := handlerEnv(t, nil, true)
	resp, body = e2.post(t, path, map[string]string{"X-Amz-Invocation-Type": "Event"}, `{}`)
	if got := lambdaAnswer(resp, body); got.Status != 503 || got.ErrorType != "ServiceException" {
		t.Errorf("Event without a queue: got %+v %s, want 503 ServiceException", got, body)
	}
	// An empty payload is an empty object.
	resp, body = e.post(t, path, nil, ``)
	if resp.StatusCode != 200 || !strings.Contains(body, `"echo":{}`) {
		t.Errorf("empty payload: got %d %s, want 200 echoing {}", resp.StatusCode, body)
	}
}

func TestTailAndFunctionError(t *testing.T) {
	e, _, _ := handlerEnv(t, nil, true)
	path := lambdaPath("c1:function:hello")
	resp, body := e.post(t, path, map[string]string{"X-Amz-Log-Type": "Tail"}, `{"fail":"it broke"}`)
	if resp.StatusCode != 200 || resp.Header.Get("X-Amz-Function-Error") != "Unhandled" {
		t.Fatalf("got %d function error %q, want 200 Unhandled", resp.StatusCode, resp.Header.Get("X-Amz-Function-Error"))
	}
	var doc map[string]string
	if err := json.Unmarshal([]byte(body), &doc); err != nil || doc["errorMessage"] != "it broke" {
		t.Errorf("body %s, want the error document", body)
	}
	logTail, err := base64.StdEncoding.DecodeString(resp.Header.Get("X-Amz-Log-Result"))
	if err != nil || len(logTail) != api.LogTailBytes || !bytes.HasSuffix(logTail, []byte("END")) {
		t.Errorf("X-Amz-Log-Result: %d bytes (err %v), want the last %d bytes of the log", len(logTail), err, api.LogTailBytes)
	}
	resp, _ = e.post(t, path, nil, `{}`)
	if resp.Header.Get("X-Amz-Log-Result") != "" || resp.Header.Get("X-Amz-Function-Error") != "" {
		t.Errorf("without Tail and without error: got headers %v", resp.Header)
	}
	for outcome, want := range map[string]float64{outcomeFunctionError: 1, outcomeOK: 1} {
		if got := testutil.ToFloat64(e.v.metrics.invocations.WithLabelValues("c1/hello", api.InvokeRequestResponse, outcome)); got != want {
			t.Errorf("invocations{outcome=%s} = %v, want %v", outcome, got, want)
		}
	}
}

func TestClientContextHeader(t *testing.T) {
	e, a1, _ := handlerEnv(t, nil, true)
	path := lambdaPath("c1:function:hello")
	cc := `{"client":{"app_title":"t"},"custom":{"k":"v"}}`
	resp, body := e.post(t, path, map[string]string{api.ClientContextHeader: base64.StdEncoding.EncodeToString([]byte(cc))}, `{}`)
	if resp.StatusCode != 200 || a1.lastBody.ClientContext != cc {
		t.Errorf("got %d %s; the agent got client context %q, want %q", resp.StatusCode, body, a1.lastBody.ClientContext, cc)
	}
	if resp, _ := e.post(t, path, nil, `{}`); resp.StatusCode != 200 || a1.lastBody.ClientContext != "" {
		t.Errorf("without the header the agent got client context %q", a1.lastBody.ClientContext)
	}
	for name, h := range map[string]string{
		"not base64":      "{not base64}",
		"not JSON":        base64.StdEncoding.EncodeToString([]byte("hello")),
		"not an object":   base64.StdEncoding.EncodeToString([]byte("[1]")),
		"over 3583 bytes": base64.StdEncoding.EncodeToString([]byte(`{"custom":{"k":"` + strings.Repeat("x", 2700) + `"}}`)),
	} {
		resp, body := e.post(t, path, map[string]string{api.ClientContextHeader: h}, `{}`)
		if resp.StatusCode != 400 || resp.Header.Get("X-Amzn-ErrorType") != "InvalidRequestContentException" ||
			!strings.Contains(body, api.ClientContextHeader) {
			t.Errorf("%s: got %d %s %s, want 400 InvalidRequestContentException naming the header", name, resp.StatusCode,
				resp.Header.Get("X-Amzn-ErrorType"), body)
		}
	}
}

// countingReader counts what the handler reads of a body.
type countingReader struct {
	n, limit int
}

func (c *countingReader) Read(p []byte) (int, error) {
	if c.n >= c.limit {
		return 0, io.EOF
	}
	if len(p) > c.limit-c.n {
		p = p[:c.limit-c.n]
	}
	for i := range p {
		p[i] = ' '
	}
	c.n += len(p)
	return len(p), nil
}

func TestPayloadTooLarge(t *testing.T) {
	e, _, _ := handlerEnv(t, nil, true)
	for _, tc := range []struct {
		name          string
		contentLength int64
		maxRead       int
	}{
		{"declared", api.MaxInvokePayload + 1, 0},
		{"chunked", -1, api.MaxInvokePayload + 64<<10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := &countingReader{limit: 64 << 20}
			r := httptest.NewRequest(http.MethodPost, lambdaPath("c1:function:hello"), body)
			r.ContentLength = tc.contentLength
			r.SetPathValue("name", "c1:function:hello")
			r = r.WithContext(httpapi.WithPrincipal(r.Context(), httpapi.Principal{}))
			rec := httptest.NewRecorder()
			e.v.handleLambdaInvoke(rec, r)
			if rec.Code != 413 || rec.Header().Get("X-Amzn-ErrorType") != "RequestEntityTooLargeException" {
				t.Errorf("got %d %s, want 413 RequestEntityTooLargeException", rec.Code, rec.Header().Get("X-Amzn-ErrorType"))
			}
			if body.n > tc.maxRead {
				t.Errorf("read %d bytes of the body, want at most %d", body.n, tc.maxRead)
			}
		})
	}
}
