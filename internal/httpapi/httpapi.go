// Package httpapi is the HTTP plumbing the server and its subsystems
// share: the one table that turns errors into wire errors (rendered as
// Shoal's JSON errors, or as Lambda's for the Lambda-compatible API),
// strict JSON request bodies, the principal a request acts for, and the
// Router through which a subsystem registers its routes with the server's
// access rules.
package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/state"
)

// Errors a handler wraps (with %w and a message naming the problem) to
// answer with a status the state store's errors do not cover.
var (
	ErrTooLarge        = errors.New("httpapi: too large")
	ErrTooManyRequests = errors.New("httpapi: too many requests")
	ErrUnauthorized    = errors.New("httpapi: unauthorized")
	ErrForbidden       = errors.New("httpapi: forbidden")
	ErrUnavailable     = errors.New("httpapi: unavailable")
	ErrNoLeader        = errors.New("server: not the leader")
	// ErrInvalidContent: the request body is not what the operation
	// takes (an invocation's payload that is not JSON).
	ErrInvalidContent = errors.New("httpapi: invalid request content")
	// ErrBadSignature: an AWS SigV4 signature that does not verify,
	// is malformed or has expired.
	ErrBadSignature = errors.New("httpapi: invalid signature")
	// ErrUnknownAccessKey: an AWS SigV4 signature made with an access
	// key this installation does not know.
	ErrUnknownAccessKey = errors.New("httpapi: unknown access key")
)

// mapping is one row of the error table: the sentinel, the HTTP status,
// Shoal's stable code and the name Lambda gives the same error.
type mapping struct {
	target error
	status int
	code   string
	lambda string
}

// table is the only place where errors become wire errors; the first row
// whose sentinel the error wraps wins.
var table = []mapping{
	{state.ErrInvalid, http.StatusBadRequest, api.CodeInvalid, "InvalidParameterValueException"},
	{api.ErrInvalid, http.StatusBadRequest, api.CodeInvalid, "InvalidParameterValueException"},
	{state.ErrNotFound, http.StatusNotFound, api.CodeNotFound, "ResourceNotFoundException"},
	{state.ErrConflict, http.StatusConflict, api.CodeConflict, "ResourceConflictException"},
	{state.ErrNoRoom, http.StatusConflict, api.CodeNoCapacity, "ResourceConflictException"},
	{ErrTooLarge, http.StatusRequestEntityTooLarge, api.CodeTooLarge, "RequestEntityTooLargeException"},
	{ErrTooManyRequests, http.StatusTooManyRequests, api.CodeTooManyRequests, "TooManyRequestsException"},
	{ErrUnauthorized, http.StatusUnauthorized, api.CodeUnauthorized, "UnrecognizedClientException"},
	{ErrForbidden, http.StatusForbidden, api.CodeForbidden, "AccessDeniedException"},
	{ErrUnavailable, http.StatusServiceUnavailable, api.CodeUnavailable, "ServiceException"},
	{ErrNoLeader, http.StatusServiceUnavailable, api.CodeNoLeader, "ServiceException"},
	{ErrInvalidContent, http.StatusBadRequest, api.CodeInvalid, "InvalidRequestContentException"},
	{ErrBadSignature, http.StatusForbidden, api.CodeForbidden, LambdaSignatureError},
	{ErrUnknownAccessKey, http.StatusForbidden, api.CodeUnauthorized, "UnrecognizedClientException"},
}

// Classify returns the wire form of err: its status, Shoal code, Lambda
// error name and the message without the sentinel's own text.
func Classify(err error) (status int, code, lambda, msg string) {
	for _, m := range table {
		if errors.Is(err, m.target) {
			return m.status, m.code, m.lambda, strings.TrimPrefix(err.Error(), m.target.Error()+": ")
		}
	}
	return http.StatusInternalServerError, api.CodeInternal, "ServiceException", err.Error()
}

// WriteErr answers with err as a Shoal JSON error.
func WriteErr(w http.ResponseWriter, err error) {
	status, code, _, msg := Classify(err)
	WriteError(w, status, code, msg)
}

// LambdaSignatureError is the name Lambda gives a request whose signature
// does not verify; a handler passes it to WriteLambdaErrAs.
const LambdaSignatureError = "InvalidSignatureException"

// WriteLambdaErr answers with err rendered as the Lambda API renders its
// errors: the error's name in X-Amzn-ErrorType and a JSON body with Type
// and message, which AWS SDKs and the aws CLI turn into their exceptions.
func WriteLambdaErr(w http.ResponseWriter, err error) {
	status, _, name, msg := Classify(err)
	WriteLambdaErrAs(w, status, name, msg)
}

// WriteLambdaErrAs writes a Lambda error of the given status and name.
func WriteLambdaErrAs(w http.ResponseWriter, status int, name, msg string) {
	w.Header().Set("X-Amzn-ErrorType", name)
	kind := "User"
	if status >= 500 {
		kind = "Service"
	}
	WriteJSON(w, status, map[string]string{"Type": kind, "message": msg})
}

// WriteJSON answers with v as JSON.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// WriteError answers with a Shoal JSON error.
func WriteError(w http.ResponseWriter, status int, code, msg string) {
	WriteJSON(w, status, api.ErrorBody{Error: api.ErrorDetail{Code: code, Message: msg}})
}

// DecodeBody reads a JSON body strictly: at most limit bytes, no unknown
// fields, nothing after the value. On failure it has answered with a 400
// or 413 naming the problem and returns false.
func DecodeBody(w http.ResponseWriter, r *http.Request, v any, limit int64) bool {
	body := http.MaxBytesReader(w, r.Body, limit)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.More() {
		err = errors.New("unexpected data after the JSON value")
	}
	if err == nil {
		if _, e := dec.Token(); e != io.EOF {
			err = errors.New("unexpected data after the JSON value")
		}
	}
	if err == nil {
		return true
	}
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		WriteError(w, http.StatusRequestEntityTooLarge, api.CodeTooLarge, fmt.Sprintf("request body is larger than %d bytes", limit))
	case errors.Is(err, io.EOF):
		WriteError(w, http.StatusBadRequest, api.CodeInvalid, "request body is empty; a JSON object is required")
	default:
		WriteError(w, http.StatusBadRequest, api.CodeInvalid, "invalid JSON body: "+JSONProblem(err))
	}
	return false
}

// JSONProblem words a decoding error for a user.
func JSONProblem(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		field := te.Field
		if field == "" {
			field = "(top level)"
		}
		return fmt.Sprintf("%s: expected %s, got JSON %s", field, te.Type, te.Value)
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

// A Principal is who a request acts for: an operator, who may do
// anything, or one cluster, confined to that cluster's nodes' work, jobs,
// functions and its part of the file system (/clusters/NAME).
type Principal struct {
	Cluster string // empty for an operator
}

// Operator reports whether p may do anything.
func (p Principal) Operator() bool { return p.Cluster == "" }

// Sees reports whether p may see what belongs to cluster.
func (p Principal) Sees(cluster string) bool { return p.Operator() || p.Cluster == cluster }

type principalKey struct{}

// WithPrincipal returns ctx carrying p.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalOf returns the principal the server authenticated for r, and
// false when it authenticated none (a Signed route's request carrying an
// AWS signature, which the handler must verify itself).
func PrincipalOf(r *http.Request) (Principal, bool) {
	p, ok := r.Context().Value(principalKey{}).(Principal)
	return p, ok
}

// Router registers a subsystem's routes with the server's access rules.
// Patterns are net/http ServeMux patterns.
type Router struct {
	// Read and Write are for operators only; Write routes are served by
	// the leader (followers forward them).
	Read, Write func(pattern string, h http.HandlerFunc)
	// TenantRead and TenantWrite are open to clusters' tokens too: the
	// handler confines a cluster principal to its own cluster.
	TenantRead, TenantWrite func(pattern string, h http.HandlerFunc)
	// TenantUpload is a TenantWrite route whose body may be up to limit
	// bytes (others: api.MaxBodyBytes), such as a function's bundle.
	TenantUpload func(pattern string, limit int64, h http.HandlerFunc)
	// Signed routes are served by any server and accept requests signed
	// with AWS Signature Version 4: for those the server authenticates
	// no principal (PrincipalOf reports false) and the handler verifies
	// the signature. Requests with a bearer token or none are
	// authenticated as on every other route.
	Signed func(pattern string, h http.HandlerFunc)
}

// A Subsystem is a family of routes and leader loops plugged into the
// server: the server calls Routes once while building its API, runs
// LeaderLoops while it leads (each returns when stop is closed) and Close
// at shutdown.
type Subsystem interface {
	Routes(r *Router)
	LeaderLoops() []func(stop <-chan struct{})
	Close() error
}
