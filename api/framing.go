package api

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
)

// The agents' invoke route (POST /v1/agent/functions/invoke) carries
// payloads raw, not base64 in JSON: its request and its 200 and 409
// answers are framed bodies, a JSON document (a SandboxInvocation or a
// SandboxResult, without the payload) of HeaderMetaLength bytes followed
// by the payload's bytes. Errors are plain JSON ErrorBody documents,
// without the header.
const (
	// HeaderMetaLength is the length of a framed body's JSON document.
	HeaderMetaLength = "Shoal-Meta-Length"
	// ContentTypeFramed is a framed body's content type.
	ContentTypeFramed = "application/vnd.shoal.framed"
	// MaxFrameMeta bounds a framed body's JSON document.
	MaxFrameMeta = 1 << 20
)

// WriteFramed answers status with the framed body of meta and payload.
func WriteFramed(w http.ResponseWriter, status int, meta any, payload []byte) error {
	m, err := json.Marshal(meta)
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", ContentTypeFramed)
	h.Set(HeaderMetaLength, strconv.Itoa(len(m)))
	h.Set("Content-Length", strconv.Itoa(len(m)+len(payload)))
	w.WriteHeader(status)
	if _, err := w.Write(m); err != nil {
		return err
	}
	_, err = w.Write(payload)
	return err
}

// IsFramed reports whether h announces a framed body.
func IsFramed(h http.Header) bool { return h.Get(HeaderMetaLength) != "" }

// ReadFramed reads the framed body of a request or an answer with
// headers h: it decodes the JSON document into meta and returns the
// payload, of at most maxPayload bytes.
func ReadFramed(h http.Header, body io.Reader, maxPayload int, meta any) ([]byte, error) {
	n, err := strconv.Atoi(h.Get(HeaderMetaLength))
	if err != nil || n < 2 || n > MaxFrameMeta {
		return nil, fmt.Errorf("header %s must be the length of the body's JSON document, 2 to %d bytes (got %q)",
			HeaderMetaLength, MaxFrameMeta, h.Get(HeaderMetaLength))
	}
	m := make([]byte, n)
	if _, err := io.ReadFull(body, m); err != nil {
		return nil, fmt.Errorf("reading the body's %d-byte JSON document: %w", n, err)
	}
	if err := json.Unmarshal(m, meta); err != nil {
		return nil, fmt.Errorf("decoding the body's JSON document: %w", err)
	}
	payload, err := io.ReadAll(io.LimitReader(body, int64(maxPayload)+1))
	if err != nil {
		return nil, fmt.Errorf("reading the payload: %w", err)
	}
	if len(payload) > maxPayload {
		return nil, fmt.Errorf("the payload is over %d bytes", maxPayload)
	}
	return payload, nil
}
