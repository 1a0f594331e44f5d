package chunkstore

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/capability"
)

// CodeCorrupt is the error code of a read or verify that found the
// replica corrupt (HTTP 422). The replica is dropped when this is sent.
const CodeCorrupt = "corrupt"

// Headers of a chunk GET: the whole chunk's length and CRC32C, in decimal,
// whatever the offset asked for.
const (
	LengthHeader = "X-Shoal-Chunk-Length"
	CRCHeader    = "X-Shoal-Chunk-CRC"
)

// maxJSONBody bounds the JSON request bodies the handler reads.
const maxJSONBody = 64 << 10

// errSource marks a replication whose source failed; it maps to 502.
var errSource = errors.New("chunkstore: replication source failed")

// HandlerOptions configures [Store.Handler].
type HandlerOptions struct {
	// OnCorrupt, if set, is called once for each stored replica that a GET
	// or a verify finds corrupt, after the store has dropped it; the agent
	// uses it to tell the servers. It must not block for long.
	OnCorrupt func(id string)
	// ReplicateRate limits the bytes per second pulled by replications,
	// shared by all replications running through this handler; 0 means
	// unlimited.
	ReplicateRate int64
	// Client is used to pull chunks from peers; nil means a client with
	// connect and response-header timeouts (and no overall timeout, since
	// a throttled chunk may take long).
	Client *http.Client
	// Log receives errors that cannot be answered to a client; nil means
	// the store's logger.
	Log *slog.Logger
	// Authorize decides whether a request may perform op on a chunk,
	// normally by checking the capability it carries in
	// api.CapabilityHeader; it is asked before anything is read or
	// changed. A refusal wrapping [capability.ErrMissing] answers 401,
	// any other error 403. Nil allows everything (tests, and stores
	// reached only by trusted callers).
	Authorize func(r *http.Request, op capability.Op, chunk string) error
}

type handler struct {
	s        *Store
	opt      HandlerOptions
	client   *http.Client
	throttle *throttle // nil when unlimited
	log      *slog.Logger
}

// Handler returns the HTTP API of the store:
//
//	PUT    /v1/chunks/{id}             store the body (Content-Length, when sent, is the expected length)
//	GET    /v1/chunks/{id}?offset=N    verified bytes from N; LengthHeader, CRCHeader
//	POST   /v1/chunks/{id}/replicate   pull the chunk from a peer (api.ReplicateRequest)
//	DELETE /v1/chunks/{id}             delete the chunk
//	GET    /v1/chunks                  list the chunks ([]api.StoredChunk)
//	GET    /v1/chunks/{id}/verify      read and check the whole chunk
//
// With [HandlerOptions].Authorize set, a PUT and a replicate need a write
// capability for the chunk, a GET and a verify a read capability, and a
// DELETE a delete capability; the list is not checked (ids alone grant
// nothing). Writes answer only once the chunk is synced to disk. Errors are
// api.ErrorBody JSON. A GET that finds corruption before sending anything
// answers 422 [CodeCorrupt]; one that finds it mid-stream aborts the
// connection, so a reader sees an error rather than wrong bytes.
func (s *Store) Handler(opt HandlerOptions) http.Handler {
	h := &handler{s: s, opt: opt, client: opt.Client, log: opt.Log}
	if h.client == nil {
		h.client = defaultHTTPClient()
	}
	if h.log == nil {
		h.log = s.log
	}
	if opt.ReplicateRate > 0 {
		h.throttle = newThrottle(opt.ReplicateRate, time.Now)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /v1/chunks/{id}", h.authorized(capability.OpWrite, h.put))
	mux.HandleFunc("GET /v1/chunks/{id}", h.authorized(capability.OpRead, h.get))
	mux.HandleFunc("DELETE /v1/chunks/{id}", h.authorized(capability.OpDelete, h.delete))
	mux.HandleFunc("POST /v1/chunks/{id}/replicate", h.authorized(capability.OpWrite, h.replicate))
	mux.HandleFunc("GET /v1/chunks/{id}/verify", h.authorized(capability.OpRead, h.verify))
	mux.HandleFunc("GET /v1/chunks", h.list)
	return mux
}

// authorized serves next only if HandlerOptions.Authorize allows op on
// the request's chunk.
func (h *handler) authorized(op capability.Op, next http.HandlerFunc) http.HandlerFunc {
	if h.opt.Authorize == nil {
		return next
	}
	return func(w http.ResponseWriter, r *http.Request) {
		if err := h.opt.Authorize(r, op, r.PathValue("id")); err != nil {
			h.fail(w, err)
			return
		}
		next(w, r)
	}
}

func (h *handler) put(w http.ResponseWriter, r *http.Request) {
	sc, err := h.s.Put(r.PathValue("id"), r.Body, r.ContentLength)
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, sc)
}

func (h *handler) get(w http.ResponseWriter, r *http.Request) {
	var offset int64
	if q := r.URL.Query().Get("offset"); q != "" {
		var err error
		if offset, err = strconv.ParseInt(q, 10, 64); err != nil {
			h.fail(w, fmt.Errorf("%w: offset %q is not a number", ErrInvalid, q))
			return
		}
	}
	cr, sc, err := h.s.open(r.PathValue("id"), offset)
	if err != nil {
		h.fail(w, err)
		return
	}
	defer cr.Close()
	// Read and verify the first span before committing to a 200.
	if err := cr.prime(); err != nil && err != io.EOF {
		h.fail(w, err)
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", "application/octet-stream")
	hd.Set("Content-Length", strconv.FormatInt(sc.Length-offset, 10))
	hd.Set(LengthHeader, strconv.FormatInt(sc.Length, 10))
	hd.Set(CRCHeader, strconv.FormatUint(uint64(sc.CRC), 10))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	if _, err := cr.WriteTo(w); err != nil && cr.err != nil && cr.err != io.EOF {
		// The read side failed after the status was sent: cut the
		// connection so the client sees a short body, not wrong bytes.
		h.noteCorrupt(cr.err)
		h.log.Warn("aborting chunk read", "chunk", sc.ID, "offset", offset, "err", cr.err)
		panic(http.ErrAbortHandler)
	}
}

func (h *handler) delete(w http.ResponseWriter, r *http.Request) {
	if err := h.s.Delete(r.PathValue("id")); err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

func (h *handler) list(w http.ResponseWriter, r *http.Request) {
	chunks, err := h.s.List()
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, chunks)
}

func (h *handler) verify(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := h.s.Verify(id); err != nil {
		h.fail(w, err)
		return
	}
	sc, err := h.s.Stat(id)
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, sc)
}

func (h *handler) replicate(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := ValidateID(id); err != nil {
		h.fail(w, err)
		return
	}
	var req api.ReplicateRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxJSONBody)).Decode(&req); err != nil {
		h.fail(w, fmt.Errorf("%w: replicate request: %v", ErrInvalid, err))
		return
	}
	if req.Length < 0 || req.Length > api.MaxChunkSize {
		h.fail(w, fmt.Errorf("%w: replicate request: length %d", ErrInvalid, req.Length))
		return
	}
	src, err := chunkURL(req.Source, id)
	if err != nil {
		h.fail(w, err)
		return
	}
	// A retried replication of a chunk already here costs nothing.
	if sc, err := h.s.Stat(id); err == nil && req.Length != 0 && req.CRC != 0 && sc.Length == req.Length && sc.CRC == req.CRC {
		writeJSON(w, http.StatusOK, sc)
		return
	}
	sc, err := h.pull(r, id, src, req)
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, sc)
}

// pull fetches a chunk from src and stores it if it has the length and CRC
// expected: those of the request, else those the source announces.
func (h *handler) pull(r *http.Request, id, src string, req api.ReplicateRequest) (api.StoredChunk, error) {
	greq, err := http.NewRequestWithContext(r.Context(), http.MethodGet, src, nil)
	if err != nil {
		return api.StoredChunk{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if req.SourceCapability != "" {
		greq.Header.Set(api.CapabilityHeader, req.SourceCapability)
	}
	resp, err := h.client.Do(greq)
	if err != nil {
		return api.StoredChunk{}, fmt.Errorf("%w: %w", errSource, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return api.StoredChunk{}, fmt.Errorf("%w: GET %s: %w", errSource, src, decodeError(resp))
	}
	length := resp.ContentLength
	if req.Length != 0 {
		if length >= 0 && length != req.Length {
			return api.StoredChunk{}, fmt.Errorf("%w: source %s has chunk %s of %d bytes, expected %d",
				ErrMismatch, req.Source, id, length, req.Length)
		}
		length = req.Length
	}
	want := expect{crc: req.CRC, check: req.CRC != 0}
	if v, err := strconv.ParseUint(resp.Header.Get(CRCHeader), 10, 32); err == nil {
		if want.check && uint32(v) != want.crc {
			return api.StoredChunk{}, fmt.Errorf("%w: source %s has chunk %s with CRC %d, expected %d",
				ErrMismatch, req.Source, id, v, want.crc)
		}
		want = expect{crc: uint32(v), check: true}
	}
	var body io.Reader = resp.Body
	if h.throttle != nil {
		body = &throttledReader{ctx: r.Context(), t: h.throttle, r: resp.Body}
	}
	sc, err := h.s.put(id, body, length, want)
	if errors.Is(err, ErrSource) || errors.Is(err, ErrLength) || errors.Is(err, ErrTooLarge) {
		return api.StoredChunk{}, fmt.Errorf("%w: %s: %w", errSource, req.Source, err)
	}
	return sc, err
}

// noteCorrupt calls OnCorrupt if err reports the detection that dropped a
// corrupt replica.
func (h *handler) noteCorrupt(err error) {
	var ce *CorruptError
	if errors.As(err, &ce) && ce.Dropped && h.opt.OnCorrupt != nil {
		h.opt.OnCorrupt(ce.ID)
	}
}

// fail answers an error, after reporting corruption.
func (h *handler) fail(w http.ResponseWriter, err error) {
	h.noteCorrupt(err)
	status, code := errorStatus(err)
	if status == http.StatusInternalServerError {
		h.log.Error("chunk request failed", "err", err)
	}
	writeJSON(w, status, api.ErrorBody{Error: api.ErrorDetail{Code: code, Message: err.Error()}})
}

// errorStatus maps an error to its HTTP status and stable code. This is
// the only place where the package's errors become wire errors; the first
// match wins, so replication failures come before the errors they wrap.
func errorStatus(err error) (int, string) {
	for _, m := range []struct {
		target error
		status int
		code   string
	}{
		{capability.ErrMissing, http.StatusUnauthorized, api.CodeUnauthorized},
		{capability.ErrRefused, http.StatusForbidden, api.CodeForbidden},
		{errSource, http.StatusBadGateway, api.CodeUnavailable},
		{ErrMismatch, http.StatusBadGateway, api.CodeConflict},
		{ErrInvalidID, http.StatusBadRequest, api.CodeInvalid},
		{ErrInvalid, http.StatusBadRequest, api.CodeInvalid},
		{ErrLength, http.StatusBadRequest, api.CodeInvalid},
		{ErrSource, http.StatusBadRequest, api.CodeInvalid},
		{ErrTooLarge, http.StatusRequestEntityTooLarge, api.CodeTooLarge},
		{ErrNotFound, http.StatusNotFound, api.CodeNotFound},
		{ErrCorrupt, http.StatusUnprocessableEntity, CodeCorrupt},
	} {
		if errors.Is(err, m.target) {
			return m.status, m.code
		}
	}
	return http.StatusInternalServerError, api.CodeInternal
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v) // a failed write means the client left
}

// chunkURL returns the URL of chunk id on the data node at addr
// ("host:port" or "http://host:port").
func chunkURL(addr, id string) (string, error) {
	a := strings.TrimSpace(addr)
	if !strings.Contains(a, "://") {
		a = "http://" + a
	}
	u, err := url.Parse(a)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("%w: data node address %q is not host:port or http://host:port", ErrInvalid, addr)
	}
	return u.Scheme + "://" + u.Host + "/v1/chunks/" + url.PathEscape(id), nil
}
