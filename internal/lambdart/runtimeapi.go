package lambdart

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/shoal-dev/shoal/api"
)

// The Runtime API 2018-06-01, as Lambda serves it to a sandbox (see
// https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html and
// aws-lambda-go's lambda/runtime_api_client.go, which must work
// unmodified against it).
const (
	headerRequestID    = "Lambda-Runtime-Aws-Request-Id"
	headerDeadline     = "Lambda-Runtime-Deadline-Ms"
	headerFunctionARN  = "Lambda-Runtime-Invoked-Function-Arn"
	headerTraceID      = "Lambda-Runtime-Trace-Id"
	headerClientCtx    = "Lambda-Runtime-Client-Context"
	headerErrorType    = "Lambda-Runtime-Function-Error-Type"
	trailerErrorBody   = "Lambda-Runtime-Function-Error-Body"
	runtimeAPIPrefix   = "/2018-06-01/runtime"
	maxErrorDocBytes   = 1 << 20
	outcomeOK          = "ok"
	outcomeError       = "error"
	outcomeTimeout     = "timeout"
	outcomeOOM         = "oom"
	outcomeCrash       = "crash"
	outcomeDeclined    = OutcomeDeclined
	errTypeUnhandled   = "Unhandled"
	functionErrorField = "Unhandled" // SandboxResult.FunctionError
)

// OutcomeDeclined is the outcome Hooks.Invoked reports for an invocation
// the pool declined (no idle sandbox and no start asked for, or the
// function at its share).
const OutcomeDeclined = "declined"

// call is one invocation handed to a sandbox.
type call struct {
	reqID    string
	payload  []byte
	deadline time.Time
	arn      string
	traceID  string
	// clientContext is the caller's client context (JSON), or "".
	clientContext string

	once sync.Once
	done chan struct{} // closed once answered; response or ferr set before
	// response is the function's answer; ferr its error, if any.
	response []byte
	ferr     *fnError
}

func (c *call) answer(response []byte, ferr *fnError) {
	c.once.Do(func() {
		c.response, c.ferr = response, ferr
		close(c.done)
	})
}

// fnError is a function error: Lambda's {"errorMessage","errorType"}
// document, and the invocation's outcome for logs and metrics.
type fnError struct {
	Type       string          `json:"errorType"`
	Message    string          `json:"errorMessage"`
	StackTrace json.RawMessage `json:"stackTrace,omitempty"`
	outcome    string
	// reset: the sandbox must not serve again (its runtime was refused
	// an answer, and aws-lambda-go exits then).
	reset bool
}

// Error returns the error's type and message.
func (e *fnError) Error() string { return e.Type + ": " + e.Message }

// doc is the error document returned as the invocation's payload.
func (e *fnError) doc() []byte {
	b, err := json.Marshal(struct {
		Message    string          `json:"errorMessage"`
		Type       string          `json:"errorType"`
		StackTrace json.RawMessage `json:"stackTrace,omitempty"`
	}{e.Message, e.Type, e.StackTrace})
	if err != nil { // a stack trace that is not JSON after all
		b, _ = json.Marshal(map[string]string{"errorMessage": e.Message, "errorType": e.Type})
	}
	return b
}

// parseErrorDoc reads the error a runtime posted: the type from the
// header when set, else from the document; a body that is not Lambda's
// JSON becomes the message.
func parseErrorDoc(body []byte, headerType string) *fnError {
	e := &fnError{outcome: outcomeError}
	if err := json.Unmarshal(body, e); err != nil {
		e = &fnError{Message: string(body), outcome: outcomeError}
	}
	if e.StackTrace != nil && !json.Valid(e.StackTrace) {
		e.StackTrace = nil
	}
	if headerType != "" {
		e.Type = headerType
	}
	if e.Type == "" {
		e.Type = errTypeUnhandled
	}
	return e
}

// routes is a sandbox's Runtime API.
func (s *sbox) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+runtimeAPIPrefix+"/invocation/next", s.handleNext)
	mux.HandleFunc("POST "+runtimeAPIPrefix+"/invocation/{id}/response", s.handleResponse)
	mux.HandleFunc("POST "+runtimeAPIPrefix+"/invocation/{id}/error", s.handleError)
	mux.HandleFunc("POST "+runtimeAPIPrefix+"/init/error", s.handleInitError)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		runtimeError(w, http.StatusNotFound, "InvalidRequest", fmt.Sprintf("no such Runtime API route: %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// runtimeError answers with Lambda's error document.
func runtimeError(w http.ResponseWriter, status int, errType, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"errorMessage": msg, "errorType": errType})
}

func accepted(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	io.WriteString(w, `{"status":"OK"}`+"\n")
}

// handleNext blocks until the sandbox has an invocation, and hands it
// out. The first call ends the sandbox's init.
func (s *sbox) handleNext(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	stale := s.cur
	s.cur = nil
	s.mu.Unlock()
	if stale != nil {
		stale.answer(nil, &fnError{Type: "Runtime.InvalidStateTransition", outcome: outcomeError,
			Message: "RequestId: " + stale.reqID + " Error: the runtime asked for the next invocation without answering this one"})
	}
	s.readyOnce.Do(func() { close(s.ready) })
	s.pool.runtimeWaiting(s, true)
	var c *call
	select {
	case c = <-s.queue:
	case <-r.Context().Done():
		s.pool.runtimeWaiting(s, false)
		return
	case <-s.exited:
		return
	}
	s.pool.runtimeWaiting(s, false)
	s.mu.Lock()
	s.cur = c
	s.mu.Unlock()
	h := w.Header()
	h.Set(headerRequestID, c.reqID)
	// Rounded up to the millisecond: a runtime's own deadline must not
	// come before the pool's, which times the invocation out.
	h.Set(headerDeadline, strconv.FormatInt(c.deadline.Add(time.Millisecond-1).UnixMilli(), 10))
	h.Set(headerFunctionARN, c.arn)
	h.Set(headerTraceID, c.traceID)
	if c.clientContext != "" {
		h.Set(headerClientCtx, c.clientContext)
	}
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(c.payload)))
	w.WriteHeader(http.StatusOK)
	w.Write(c.payload)
}

// current returns the invocation id names when it is the one the
// sandbox holds, and takes it; else it answers 400 as Lambda does.
func (s *sbox) current(w http.ResponseWriter, id string) *call {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil || s.cur.reqID != id {
		runtimeError(w, http.StatusBadRequest, "InvalidRequestID", "Invalid request ID: "+strconv.Quote(id))
		return nil
	}
	c := s.cur
	s.cur = nil
	return c
}

// handleResponse takes an invocation's response. A response larger than
// api.MaxInvokePayload is refused (413) and the invocation fails.
func (s *sbox) handleResponse(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.mu.Lock()
	known := s.cur != nil && s.cur.reqID == id
	s.mu.Unlock()
	if !known {
		runtimeError(w, http.StatusBadRequest, "InvalidRequestID", "Invalid request ID: "+strconv.Quote(id))
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, api.MaxInvokePayload+1))
	if err != nil {
		runtimeError(w, http.StatusBadRequest, "InvalidRequest", "reading the response: "+err.Error())
		return
	}
	c := s.current(w, id)
	if c == nil {
		return
	}
	if len(body) > api.MaxInvokePayload {
		msg := fmt.Sprintf("Exceeded maximum allowed payload size (%d bytes).", api.MaxInvokePayload)
		c.answer(nil, &fnError{Type: "Function.ResponseSizeTooLarge", outcome: outcomeError, reset: true,
			Message: fmt.Sprintf("Response payload size exceeded maximum allowed payload size (%d bytes).", api.MaxInvokePayload)})
		runtimeError(w, http.StatusRequestEntityTooLarge, "RequestEntityTooLarge", msg)
		return
	}
	// A streamed response that failed midway says so in trailers (see
	// aws-lambda-go's errorCapturingReader).
	if t := r.Trailer.Get(headerErrorType); t != "" {
		doc, _ := base64.StdEncoding.DecodeString(r.Trailer.Get(trailerErrorBody))
		c.answer(nil, parseErrorDoc(doc, t))
		accepted(w)
		return
	}
	c.answer(body, nil)
	accepted(w)
}

// handleError takes an invocation's error.
func (s *sbox) handleError(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	body, err := io.ReadAll(io.LimitReader(r.Body, maxErrorDocBytes))
	if err != nil {
		runtimeError(w, http.StatusBadRequest, "InvalidRequest", "reading the error: "+err.Error())
		return
	}
	c := s.current(w, id)
	if c == nil {
		return
	}
	c.answer(nil, parseErrorDoc(body, r.Header.Get(headerErrorType)))
	accepted(w)
}

// handleInitError takes the error of a runtime that failed to initialise;
// the sandbox is then stopped. After init it is refused (403), as on
// Lambda.
func (s *sbox) handleInitError(w http.ResponseWriter, r *http.Request) {
	select {
	case <-s.ready:
		runtimeError(w, http.StatusForbidden, "InvalidStateTransition", "the runtime already asked for an invocation: init is over")
		return
	default:
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, maxErrorDocBytes))
	e := parseErrorDoc(body, r.Header.Get(headerErrorType))
	if e.Type == errTypeUnhandled {
		e.Type = "Runtime.InitError"
	}
	e.outcome = outcomeCrash
	s.initOnce.Do(func() {
		s.initErr = e
		close(s.initFailed)
	})
	s.pool.log.Info("lambdart: runtime reported an init error", "sandbox", s.id, "function", s.key.function, "error_type", e.Type)
	accepted(w)
}
