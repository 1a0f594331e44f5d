package httpapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/state"
)

func TestOneTableTwoRenderings(t *testing.T) {
	for _, tc := range []struct {
		err               error
		status            int
		code, lambda, msg string
	}{
		{fmt.Errorf("%w: function hello", state.ErrNotFound), 404, api.CodeNotFound, "ResourceNotFoundException", "function hello"},
		{fmt.Errorf("%w: payload is 7340032 bytes", ErrTooLarge), 413, api.CodeTooLarge, "RequestEntityTooLargeException", "payload is 7340032 bytes"},
		{fmt.Errorf("%w: concurrency 2 used up", ErrTooManyRequests), 429, api.CodeTooManyRequests, "TooManyRequestsException", "concurrency 2 used up"},
		{fmt.Errorf("%w: name: bad", api.ErrInvalid), 400, api.CodeInvalid, "InvalidParameterValueException", "name: bad"},
		{fmt.Errorf("%w: the payload is not JSON", ErrInvalidContent), 400, api.CodeInvalid, "InvalidRequestContentException", "the payload is not JSON"},
		{fmt.Errorf("%w: signature mismatch", ErrBadSignature), 403, api.CodeForbidden, "InvalidSignatureException", "signature mismatch"},
		{fmt.Errorf("%w: AKID", ErrUnknownAccessKey), 403, api.CodeUnauthorized, "UnrecognizedClientException", "AKID"},
		{fmt.Errorf("disk on fire"), 500, api.CodeInternal, "ServiceException", "disk on fire"},
	} {
		t.Run(tc.lambda, func(t *testing.T) {
			rec := httptest.NewRecorder()
			WriteErr(rec, tc.err)
			var body api.ErrorBody
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatal(err)
			}
			if rec.Code != tc.status || body.Error.Code != tc.code || body.Error.Message != tc.msg {
				t.Errorf("shoal rendering: got %d %q %q, want %d %q %q", rec.Code, body.Error.Code, body.Error.Message, tc.status, tc.code, tc.msg)
			}
			rec = httptest.NewRecorder()
			WriteLambdaErr(rec, tc.err)
			var lb map[string]string
			if err := json.Unmarshal(rec.Body.Bytes(), &lb); err != nil {
				t.Fatal(err)
			}
			if rec.Code != tc.status || rec.Header().Get("X-Amzn-ErrorType") != tc.lambda || lb["message"] != tc.msg {
				t.Errorf("lambda rendering: got %d %q %q, want %d %q %q", rec.Code, rec.Header().Get("X-Amzn-ErrorType"), lb["message"], tc.status, tc.lambda, tc.msg)
			}
		})
	}
}

func TestPrincipalOf(t *testing.T) {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	if _, ok := PrincipalOf(r); ok {
		t.Fatal("a request nobody authenticated has a principal")
	}
	r = r.WithContext(WithPrincipal(r.Context(), Principal{Cluster: "c1"}))
	p, ok := PrincipalOf(r)
	if !ok || p.Operator() || !p.Sees("c1") || p.Sees("c2") {
		t.Fatalf("got %+v %v, want cluster c1 seeing only c1", p, ok)
	}
}
