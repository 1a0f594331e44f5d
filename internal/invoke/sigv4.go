package invoke

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/shoal-dev/shoal/internal/httpapi"
)

// sigV4Algorithm starts the Authorization header of a SigV4-signed request.
const sigV4Algorithm = "AWS4-HMAC-SHA256"

// maxClockSkew is how far a signed request's X-Amz-Date may be from the
// server's clock, as AWS allows.
const maxClockSkew = 15 * time.Minute

// signedAuth is a parsed SigV4 Authorization header.
type signedAuth struct {
	accessKey, date, region, service string
	signedHeaders                    []string // lower case, as signed
	signature                        string
}

// parseAuth parses "AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request,
// SignedHeaders=a;b, Signature=hex".
func parseAuth(h string) (*signedAuth, error) {
	rest, ok := strings.CutPrefix(h, sigV4Algorithm+" ")
	if !ok {
		return nil, fmt.Errorf("the Authorization header does not start with %s", sigV4Algorithm)
	}
	var a signedAuth
	var cred, signed string
	for _, part := range strings.Split(rest, ",") {
		k, val, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return nil, fmt.Errorf("the Authorization header has a malformed part %q", part)
		}
		switch k {
		case "Credential":
			cred = val
		case "SignedHeaders":
			signed = val
		case "Signature":
			a.signature = val
		}
	}
	scope := strings.Split(cred, "/")
	if len(scope) != 5 || scope[4] != "aws4_request" || scope[0] == "" {
		return nil, fmt.Errorf("the Authorization header's Credential %q is not ACCESS_KEY/DATE/REGION/SERVICE/aws4_request", cred)
	}
	a.accessKey, a.date, a.region, a.service = scope[0], scope[1], scope[2], scope[3]
	if signed == "" || a.signature == "" {
		return nil, fmt.Errorf("the Authorization header lacks SignedHeaders or Signature")
	}
	a.signedHeaders = strings.Split(signed, ";")
	if !slices.Contains(a.signedHeaders, "host") {
		return nil, fmt.Errorf("the signature must cover the host header")
	}
	return &a, nil
}

// sigError is a refused signature: the error to render and the reason
// counted in shoal_server_refused_total.
type sigError struct {
	err    error
	reason string
}

// verifySignature checks r's SigV4 signature over body and returns the
// principal of its access key. The signature is recomputed with the AWS
// SDK's signer over a request rebuilt from exactly the signed headers,
// the method, the path as sent (the signer escapes it once more, as
// botocore and the SDKs do for every service but S3), the query, the
// X-Amz-Date and the body's hash, and compared in constant time.
func (v *Invoker) verifySignature(r *http.Request, body []byte) (httpapi.Principal, *sigError) {
	refuse := func(reason string, sentinel error, format string, args ...any) (httpapi.Principal, *sigError) {
		return httpapi.Principal{}, &sigError{fmt.Errorf("%w: "+format, append([]any{sentinel}, args...)...), reason}
	}
	a, err := parseAuth(r.Header.Get("Authorization"))
	if err != nil {
		return refuse("malformed", httpapi.ErrBadSignature, "%v", err)
	}
	if v.cfg.OpenInstallation && a.accessKey == "operator" {
		// An open installation has no operator secret to check against;
		// unsigned callers are operators there anyway.
		return httpapi.Principal{}, nil
	}
	secret, p, ok := v.cfg.Catalog.SigningSecret(a.accessKey)
	if !ok {
		return refuse("unknown_key", httpapi.ErrUnknownAccessKey,
			"the security token included in the request is invalid: access key %q is neither \"operator\" nor a cluster's name", a.accessKey)
	}
	if a.service != "lambda" {
		return refuse("malformed", httpapi.ErrBadSignature, "the credential scope names service %q; it must be \"lambda\"", a.service)
	}
	amzDate := r.Header.Get("X-Amz-Date")
	t, err := time.Parse("20060102T150405Z", amzDate)
	if err != nil {
		return refuse("malformed", httpapi.ErrBadSignature, "X-Amz-Date %q is not a date like 20060102T150405Z", amzDate)
	}
	if !strings.HasPrefix(amzDate, a.date) || len(a.date) != 8 {
		return refuse("malformed", httpapi.ErrBadSignature, "the credential scope's date %q is not X-Amz-Date's day", a.date)
	}
	if now := v.now(); t.Before(now.Add(-maxClockSkew)) || t.After(now.Add(maxClockSkew)) {
		return refuse("expired", httpapi.ErrBadSignature, "signature expired: %s is more than %s from the server's time %s",
			amzDate, maxClockSkew, now.UTC().Format("20060102T150405Z"))
	}

	sum := sha256.Sum256(body)
	payloadHash := hex.EncodeToString(sum[:])
	if h := r.Header.Get("X-Amz-Content-Sha256"); h != "" && h != payloadHash {
		// Covers UNSIGNED-PAYLOAD and streaming too: the Lambda API
		// signs its payloads.
		return refuse("mismatch", httpapi.ErrBadSignature, "X-Amz-Content-Sha256 %q is not the SHA-256 of the body", h)
	}

	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	rebuilt := &http.Request{
		Method: r.Method,
		URL:    &url.URL{Scheme: scheme, Host: r.Host, Path: r.URL.Path, RawPath: r.URL.RawPath, RawQuery: r.URL.RawQuery},
		Host:   r.Host,
		Header: make(http.Header, len(a.signedHeaders)),
	}
	for _, h := range a.signedHeaders {
		switch h {
		case "host": // the signer signs Host from the request
		case "content-length":
			rebuilt.ContentLength = int64(len(body))
		default:
			k := http.CanonicalHeaderKey(h)
			vals, ok := r.Header[k]
			if !ok {
				return refuse("mismatch", httpapi.ErrBadSignature, "the signed header %q is missing", h)
			}
			rebuilt.Header[k] = vals
		}
	}
	creds := aws.Credentials{AccessKeyID: a.accessKey, SecretAccessKey: secret}
	if err := v.signer.SignHTTP(r.Context(), creds, rebuilt, payloadHash, a.service, a.region, t); err != nil {
		return refuse("mismatch", httpapi.ErrBadSignature, "%v", err)
	}
	got := rebuilt.Header.Get("Authorization")
	_, want, _ := strings.Cut(got, "Signature=")
	if subtle.ConstantTimeCompare([]byte(want), []byte(a.signature)) != 1 {
		return refuse("mismatch", httpapi.ErrBadSignature,
			"the request signature we calculated does not match the signature you provided; check your secret access key (the operator token or the cluster's token) and signing method")
	}
	return p, nil
}
