package invoke

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// signedRequest builds a request to e signed as an AWS SDK signs one;
// tamper may change it after signing.
func signedRequest(t *testing.T, e *testEnv, key, secret, rawPath, body string, hdr map[string]string, at time.Time, tamper func(*http.Request)) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.srv.URL+rawPath, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	sum := sha256.Sum256([]byte(body))
	creds := aws.Credentials{AccessKeyID: key, SecretAccessKey: secret}
	if err := v4.NewSigner().SignHTTP(context.Background(), creds, req, hex.EncodeToString(sum[:]), "lambda", "us-east-1", at); err != nil {
		t.Fatal(err)
	}
	if tamper != nil {
		tamper(req)
	}
	return req
}

func TestSigV4(t *testing.T) {
	e, _, _ := handlerEnv(t, nil, false)
	path := "/2015-03-31/functions/c1%3Afunction%3Ahello/invocations"
	for _, tc := range []struct {
		name        string
		key, secret string
		path, body  string
		hdr         map[string]string
		age         time.Duration
		tamper      func(*http.Request)
		status      int
		errType     string
		refused     string
	}{
		{name: "operator", key: "operator", secret: "op-secret", path: path, status: 200},
		{name: "cluster key", key: "c1", secret: "c1-secret", path: path, status: 200},
		{name: "unescaped colons", key: "c1", secret: "c1-secret", path: "/2015-03-31/functions/arn:aws:lambda:us-east-1:c1:function:hello:1/invocations", status: 200},
		{name: "bare name", key: "c1", secret: "c1-secret", path: "/2015-03-31/functions/hello/invocations", status: 200},
		{name: "qualifier query", key: "c1", secret: "c1-secret", path: "/2015-03-31/functions/hello/invocations?Qualifier=1", status: 200},
		{name: "signed type header", key: "c1", secret: "c1-secret", path: path, hdr: map[string]string{"X-Amz-Invocation-Type": "DryRun"}, status: 204},
		{name: "unsigned header added", key: "c1", secret: "c1-secret", path: path,
			tamper: func(r *http.Request) { r.Header.Set("X-Extra", "1") }, status: 200},
		{name: "clock skew within 15 minutes", key: "c1", secret: "c1-secret", path: path, age: 14 * time.Minute, status: 200},
		{name: "cluster key naming another cluster", key: "c2", secret: "c2-secret", path: path, status: 403, errType: "AccessDeniedException"},
		{name: "wrong secret", key: "c1", secret: "nope", path: path, status: 403, errType: "InvalidSignatureException", refused: "signature/mismatch"},
		{name: "unknown key", key: "c9", secret: "c1-secret", path: path, status: 403, errType: "UnrecognizedClientException", refused: "signature/unknown_key"},
		{name: "expired", key: "c1", secret: "c1-secret", path: path, age: 16 * time.Minute, status: 403, errType: "InvalidSignatureException", refused: "signature/expired"},
		{name: "from the future", key: "c1", secret: "c1-secret", path: path, age: -16 * time.Minute, status: 403, errType: "InvalidSignatureException", refused: "signature/expired"},
		{name: "tampered body", key: "c1", secret: "c1-secret", path: path, body: `{"a":1}`,
			tamper: func(r *http.Request) { r.Body = io.NopCloser(strings.NewReader(`{"a":2}`)) },
			status: 403, errType: "InvalidSignatureException", refused: "signature/mismatch"},
		{name: "tampered path", key: "c1", secret: "c1-secret", path: "/2015-03-31/functions/hello:1/invocations",
			tamper: func(r *http.Request) { r.URL.Path, r.URL.RawPath = "/2015-03-31/functions/hello:2/invocations", "" },
			status: 403, errType: "InvalidSignatureException", refused: "signature/mismatch"},
		{name: "tampered query", key: "c1", secret: "c1-secret", path: "/2015-03-31/functions/hello/invocations?Qualifier=1",
			tamper: func(r *http.Request) { r.URL.RawQuery = "Qualifier=2" },
			status: 403, errType: "InvalidSignatureException", refused: "signature/mismatch"},
		{name: "tampered signed header", key: "c1", secret: "c1-secret", path: path, hdr: map[string]string{"X-Amz-Invocation-Type": "DryRun"},
			tamper: func(r *http.Request) { r.Header.Set("X-Amz-Invocation-Type", "Event") },
			status: 403, errType: "InvalidSignatureException", refused: "signature/mismatch"},
		{name: "signed header removed", key: "c1", secret: "c1-secret", path: path, hdr: map[string]string{"X-Amz-Invocation-Type": "DryRun"},
			tamper: func(r *http.Request) { r.Header.Del("X-Amz-Invocation-Type") },
			status: 403, errType: "InvalidSignatureException", refused: "signature/mismatch"},
		{name: "content hash not the body's", key: "c1", secret: "c1-secret", path: path, hdr: map[string]string{"X-Amz-Content-Sha256": "UNSIGNED-PAYLOAD"},
			status: 403, errType: "InvalidSignatureException", refused: "signature/mismatch"},
		{name: "malformed", key: "c1", secret: "c1-secret", path: path,
			tamper: func(r *http.Request) { r.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=c1") },
			status: 403, errType: "InvalidSignatureException", refused: "signature/malformed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.mu.Lock()
			e.refused = nil
			e.mu.Unlock()
			body := tc.body
			if body == "" {
				body = `{}`
			}
			req := signedRequest(t, e, tc.key, tc.secret, tc.path, body, tc.hdr, e.now.Add(-tc.age), tc.tamper)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status || resp.Header.Get("X-Amzn-ErrorType") != tc.errType {
				t.Errorf("got %d %q %s, want %d %q", resp.StatusCode, resp.Header.Get("X-Amzn-ErrorType"), b, tc.status, tc.errType)
			}
			refused := strings.Join(e.refusedList(), ",")
			if refused != tc.refused {
				t.Errorf("refused counted %q, want %q", refused, tc.refused)
			}
		})
	}
}

func TestSigV4OpenInstallation(t *testing.T) {
	e, _, _ := handlerEnv(t, nil, true)
	path := "/2015-03-31/functions/c1%3Afunction%3Ahello/invocations"
	for _, tc := range []struct {
		key, secret string
		status      int
	}{
		{"operator", "anything", 200},
		{"c1", "c1-secret", 200},
		{"c1", "wrong", 403},
	} {
		req := signedRequest(t, e, tc.key, tc.secret, path, `{}`, nil, e.now, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("key %s secret %s: got %d, want %d", tc.key, tc.secret, resp.StatusCode, tc.status)
		}
	}
}
