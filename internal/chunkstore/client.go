package chunkstore

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/shoal-dev/shoal/api"
)

// Client talks to the chunk API of data nodes ([Store.Handler]); writers
// use it to send chunks and readers and peers to fetch them. addr is
// "host:port" or "http://host:port". Errors answered by a data node are
// [*api.Error] values. A nil HTTP uses a client shared by the package,
// with connect and response-header timeouts and no overall timeout (use
// the context). Client is safe for concurrent use.
type Client struct {
	HTTP *http.Client
}

// defaultHTTPClient is shared so that zero Clients share connections.
var defaultHTTPClient = sync.OnceValue(func() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout: 10 * time.Second,
		// A data node answers a PUT only after syncing up to 1 GiB.
		ResponseHeaderTimeout: 2 * time.Minute,
		ExpectContinueTimeout: time.Second,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
	}}
})

func (c *Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return defaultHTTPClient()
}

// Put sends a chunk of length bytes (-1: unknown, sent chunked) to the
// data node at addr and returns it as stored there, which is once it is on
// the node's disk. Put does not close r. capToken is a write capability
// for the chunk (see api.CapabilityHeader), as are those of the other
// methods for their operations; "" sends none.
func (c *Client) Put(ctx context.Context, addr, id, capToken string, r io.Reader, length int64) (api.StoredChunk, error) {
	u, err := c.url(addr, id, "")
	if err != nil {
		return api.StoredChunk{}, err
	}
	if r == nil && length != 0 {
		return api.StoredChunk{}, fmt.Errorf("%w: nil reader for a chunk of length %d", ErrInvalid, length)
	}
	var body io.ReadCloser = http.NoBody
	if length != 0 {
		body = io.NopCloser(r)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u, body)
	if err != nil {
		return api.StoredChunk{}, fmt.Errorf("chunkstore: %w", err)
	}
	req.ContentLength = length
	req.Header.Set("Content-Type", "application/octet-stream")
	setCapability(req, capToken)
	var sc api.StoredChunk
	if err := c.do(req, &sc); err != nil {
		return api.StoredChunk{}, err
	}
	if sc.ID != id || (length >= 0 && sc.Length != length) {
		return api.StoredChunk{}, fmt.Errorf("chunkstore: %s stored chunk %s as %s of %d bytes", addr, id, sc.ID, sc.Length)
	}
	return sc, nil
}

// Get returns the bytes of a chunk from offset to its end, as verified by
// the data node. The caller reads and closes the body. A node that finds
// corruption mid-stream cuts the connection, so a read error, never wrong
// bytes, tells of it; when offset is 0 the body is also checked against
// the chunk's CRC at its end (an error wrapping [ErrCorrupt] on mismatch).
func (c *Client) Get(ctx context.Context, addr, id, capToken string, offset int64) (io.ReadCloser, error) {
	resp, err := c.get(ctx, addr, id, capToken, offset)
	if err != nil {
		return nil, err
	}
	if offset == 0 {
		if want, err := strconv.ParseUint(resp.Header.Get(CRCHeader), 10, 32); err == nil {
			return &crcReader{ReadCloser: resp.Body, id: id, want: uint32(want), h: crc32.New(castagnoli)}, nil
		}
	}
	return resp.Body, nil
}

// Fetch is Get without the whole-chunk check: it returns the bytes of a
// chunk from offset to its end as the data node verified them block by
// block, with the chunk's length and CRC32C as the node announces them
// (Length is -1 if it announced none). A reader that checks each chunk
// end to end itself, as package dfs does, uses it to checksum every byte
// once.
func (c *Client) Fetch(ctx context.Context, addr, id, capToken string, offset int64) (io.ReadCloser, api.StoredChunk, error) {
	resp, err := c.get(ctx, addr, id, capToken, offset)
	if err != nil {
		return nil, api.StoredChunk{}, err
	}
	sc := api.StoredChunk{ID: id, Length: -1}
	length, lerr := strconv.ParseInt(resp.Header.Get(LengthHeader), 10, 64)
	crc, cerr := strconv.ParseUint(resp.Header.Get(CRCHeader), 10, 32)
	if lerr == nil && cerr == nil {
		sc.Length, sc.CRC = length, uint32(crc)
	}
	return resp.Body, sc, nil
}

// get sends a chunk GET and returns the response if it is a 200.
func (c *Client) get(ctx context.Context, addr, id, capToken string, offset int64) (*http.Response, error) {
	u, err := c.url(addr, id, "")
	if err != nil {
		return nil, err
	}
	if offset != 0 {
		u += "?offset=" + strconv.FormatInt(offset, 10)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: %w", err)
	}
	setCapability(req, capToken)
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: GET chunk %s from %s: %w", id, addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	return resp, nil
}

// crcReader checks a whole chunk's CRC when its body ends.
type crcReader struct {
	io.ReadCloser
	id   string
	want uint32
	h    hash.Hash32
}

func (r *crcReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	r.h.Write(p[:n])
	if err == io.EOF && r.h.Sum32() != r.want {
		return n, fmt.Errorf("%w: chunk %s received with CRC %d, expected %d", ErrCorrupt, r.id, r.h.Sum32(), r.want)
	}
	return n, err
}

// Replicate asks the data node at addr to copy a chunk from req.Source and
// returns it as stored there. capToken is a write capability for the
// chunk; rr.SourceCapability, a read capability, is for the source.
func (c *Client) Replicate(ctx context.Context, addr, id, capToken string, rr api.ReplicateRequest) (api.StoredChunk, error) {
	u, err := c.url(addr, id, "/replicate")
	if err != nil {
		return api.StoredChunk{}, err
	}
	b, err := json.Marshal(rr)
	if err != nil {
		return api.StoredChunk{}, fmt.Errorf("chunkstore: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(b))
	if err != nil {
		return api.StoredChunk{}, fmt.Errorf("chunkstore: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	setCapability(req, capToken)
	var sc api.StoredChunk
	if err := c.do(req, &sc); err != nil {
		return api.StoredChunk{}, err
	}
	return sc, nil
}

// Delete deletes a chunk from the data node at addr; a missing chunk is
// not an error. capToken is a delete capability for the chunk.
func (c *Client) Delete(ctx context.Context, addr, id, capToken string) error {
	u, err := c.url(addr, id, "")
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, u, nil)
	if err != nil {
		return fmt.Errorf("chunkstore: %w", err)
	}
	setCapability(req, capToken)
	return c.do(req, nil)
}

// setCapability puts capToken, if any, in req's capability header.
func setCapability(req *http.Request, capToken string) {
	if capToken != "" {
		req.Header.Set(api.CapabilityHeader, capToken)
	}
}

func (c *Client) url(addr, id, suffix string) (string, error) {
	if err := ValidateID(id); err != nil {
		return "", err
	}
	u, err := chunkURL(addr, id)
	return u + suffix, err
}

// do sends req and decodes a 200 answer into out, if not nil.
func (c *Client) do(req *http.Request, out any) error {
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return fmt.Errorf("chunkstore: %s %s: %w", req.Method, req.URL.Redacted(), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return decodeError(resp)
	}
	if out == nil {
		io.Copy(io.Discard, io.LimitReader(resp.Body, maxJSONBody)) // lets the connection be reused
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxJSONBody)).Decode(out); err != nil {
		return fmt.Errorf("chunkstore: decoding answer to %s %s: %w", req.Method, req.URL.Redacted(), err)
	}
	return nil
}

// decodeError turns an error answer into an *api.Error.
func decodeError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxJSONBody))
	var eb api.ErrorBody
	if json.Unmarshal(b, &eb) == nil && eb.Error.Message != "" {
		return &api.Error{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
	}
	return &api.Error{Status: resp.StatusCode, Code: api.CodeInternal,
		Message: fmt.Sprintf("data node answered %s: %s", resp.Status, strings.TrimSpace(string(b)))}
}
