package chunkstore

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/shoal-dev/shoal/api"
)

// node is a store served over HTTP, with the corrupt chunks it reported.
type node struct {
	s       *Store
	srv     *httptest.Server
	addr    string // host:port
	corrupt chan string
}

func newNode(t *testing.T, opt HandlerOptions) *node {
	t.Helper()
	n := &node{s: newStore(t), corrupt: make(chan string, 16)}
	opt.OnCorrupt = func(id string) { n.corrupt <- id }
	n.srv = httptest.NewServer(n.s.Handler(opt))
	t.Cleanup(n.srv.Close)
	n.addr = n.srv.Listener.Addr().String()
	return n
}

// wantCorruptReport waits for the one report of chunk id.
func (n *node) wantCorruptReport(t *testing.T, id string) {
	t.Helper()
	select {
	case got := <-n.corrupt:
		if got != id {
			t.Errorf("OnCorrupt(%q), want %q", got, id)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("OnCorrupt was not called for %s", id)
	}
	select {
	case got := <-n.corrupt:
		t.Errorf("OnCorrupt(%q) called again", got)
	default:
	}
}

func wantAPIError(t *testing.T, err error, status int, code string) {
	t.Helper()
	var ae *api.Error
	if !errors.As(err, &ae) {
		t.Fatalf("error = %v, want an *api.Error", err)
	}
	if ae.Status != status || ae.Code != code {
		t.Errorf("error = %d %q (%s), want %d %q", ae.Status, ae.Code, ae.Message, status, code)
	}
}

func TestHTTPRoundTrip(t *testing.T) {
	n := newNode(t, HandlerOptions{})
	var c Client
	ctx := context.Background()
	for _, tt := range []struct {
		addr   string
		length int
		send   int64 // length passed to Put
	}{
		{n.addr, 0, 0},
		{n.srv.URL, 1, 1},
		{n.addr, 3*bs + 17, 3*bs + 17},
		{n.srv.URL, copyBuf + 5, -1}, // chunked upload
	} {
		id := fmt.Sprintf("c%d", tt.length)
		t.Run(id, func(t *testing.T) {
			data := content(uint64(tt.length), tt.length)
			sc, err := c.Put(ctx, tt.addr, id, "", bytes.NewReader(data), tt.send)
			if err != nil {
				t.Fatalf("Put: %v", err)
			}
			if diff := cmp.Diff(stored(id, data), sc); diff != "" {
				t.Errorf("Put (-want +got):\n%s", diff)
			}
			for _, off := range []int64{0, 1, bs + 3, int64(tt.length)} {
				if off > int64(tt.length) {
					continue
				}
				r, err := c.Get(ctx, tt.addr, id, "", off)
				if err != nil {
					t.Fatalf("Get(%d): %v", off, err)
				}
				got, err := io.ReadAll(r)
				r.Close()
				if err != nil || !bytes.Equal(got, data[off:]) {
					t.Errorf("Get(%d): %d bytes, %v; want %d bytes", off, len(got), err, len(data)-int(off))
				}
			}
		})
	}
	resp, err := http.Get(n.srv.URL + "/v1/chunks")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var list []api.StoredChunk
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		t.Fatal(err)
	}
	want, _ := n.s.List()
	if diff := cmp.Diff(want, list); diff != "" || len(list) != 4 {
		t.Errorf("GET /v1/chunks (-want +got):\n%s", diff)
	}
	if err := c.Delete(ctx, n.addr, "c1", ""); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if err := c.Delete(ctx, n.addr, "c1", ""); err != nil {
		t.Errorf("Delete of a missing chunk: %v", err)
	}
	_, err = c.Get(ctx, n.addr, "c1", "", 0)
	wantAPIError(t, err, http.StatusNotFound, api.CodeNotFound)
}

func TestHTTPGetHeaders(t *testing.T) {
	n := newNode(t, HandlerOptions{})
	data := content(1, 2*bs+9)
	sc := mustPut(t, n.s, "c", data)
	resp, err := http.Get(n.srv.URL + "/v1/chunks/c?offset=100")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got := map[string]string{
		"status":       strconv.Itoa(resp.StatusCode),
		"length":       strconv.FormatInt(resp.ContentLength, 10),
		LengthHeader:   resp.Header.Get(LengthHeader),
		CRCHeader:      resp.Header.Get(CRCHeader),
		"content-type": resp.Header.Get("Content-Type"),
	}
	want := map[string]string{
		"status":       "200",
		"length":       strconv.Itoa(len(data) - 100),
		LengthHeader:   strconv.Itoa(len(data)),
		CRCHeader:      strconv.FormatUint(uint64(sc.CRC), 10),
		"content-type": "application/octet-stream",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("GET answer (-want +got):\n%s", diff)
	}
	for _, q := range []string{"offset=abc", "offset=-1", fmt.Sprintf("offset=%d", len(data)+1)} {
		resp, err := http.Get(n.srv.URL + "/v1/chunks/c?" + q)
		if err != nil {
			t.Fatal(err)
		}
		wantAPIError(t, decodeError(resp), http.StatusBadRequest, api.CodeInvalid)
		resp.Body.Close()
	}
}

func TestHTTPCorrupt(t *testing.T) {
	var c Client
	ctx := context.Background()
	small, large := content(1, 3*bs+17), content(2, 2*copyBuf+100)

	t.Run("found before sending", func(t *testing.T) {
		n := newNode(t, HandlerOptions{})
		mustPut(t, n.s, "c", small)
		flipByte(t, n.s.Path("c"), 2*bs)
		_, err := c.Get(ctx, n.addr, "c", "", 0)
		wantAPIError(t, err, http.StatusUnprocessableEntity, CodeCorrupt)
		n.wantCorruptReport(t, "c")
		_, err = c.Get(ctx, n.addr, "c", "", 0)
		wantAPIError(t, err, http.StatusNotFound, api.CodeNotFound)
	})
	t.Run("found mid-stream", func(t *testing.T) {
		n := newNode(t, HandlerOptions{})
		mustPut(t, n.s, "c", large)
		flipByte(t, n.s.Path("c"), int64(len(large))-10)
		r, err := c.Get(ctx, n.addr, "c", "", 0)
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		got, err := io.ReadAll(r)
		r.Close()
		if err == nil {
			t.Fatalf("read %d bytes of a corrupt chunk without an error", len(got))
		}
		if !bytes.HasPrefix(large, got) {
			t.Errorf("the %d bytes received are not the stored bytes", len(got))
		}
		if len(got) == 0 {
			t.Errorf("no bytes before the error; this case wants corruption found after the headers")
		}
		n.wantCorruptReport(t, "c")
	})
	t.Run("verify", func(t *testing.T) {
		n := newNode(t, HandlerOptions{})
		mustPut(t, n.s, "c", small)
		resp, err := http.Get(n.srv.URL + "/v1/chunks/c/verify")
		if err != nil {
			t.Fatal(err)
		}
		var sc api.StoredChunk
		if err := json.NewDecoder(resp.Body).Decode(&sc); err != nil || resp.StatusCode != 200 || sc != stored("c", small) {
			t.Errorf("verify of a good chunk = %d %+v, %v", resp.StatusCode, sc, err)
		}
		resp.Body.Close()
		flipByte(t, n.s.Path("c"), 5)
		resp, err = http.Get(n.srv.URL + "/v1/chunks/c/verify")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		wantAPIError(t, decodeError(resp), http.StatusUnprocessableEntity, CodeCorrupt)
		n.wantCorruptReport(t, "c")
	})
}

// rawRequest sends a request over a fresh TCP connection, closes the
// connection's write side and returns the answer.
func rawRequest(t *testing.T, addr, req string) *http.Response {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(30 * time.Second)) // a hang fails rather than blocks
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	conn.(*net.TCPConn).CloseWrite()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading answer: %v", err)
	}
	return resp
}

func TestHTTPPutShortBody(t *testing.T) {
	for _, tt := range []struct {
		name   string
		header string
		body   string
		status int
		code   string
	}{
		{"short body", "Content-Length: 1000", strings.Repeat("x", 10), http.StatusBadRequest, api.CodeInvalid},
		{"short chunked body", "Transfer-Encoding: chunked", "a\r\n0123456789\r\n", http.StatusBadRequest, api.CodeInvalid},
		{"too large", fmt.Sprintf("Content-Length: %d", api.MaxChunkSize+1), "", http.StatusRequestEntityTooLarge, api.CodeTooLarge},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n := newNode(t, HandlerOptions{})
			resp := rawRequest(t, n.addr, "PUT /v1/chunks/c HTTP/1.1\r\nHost: x\r\n"+tt.header+"\r\n\r\n"+tt.body)
			defer resp.Body.Close()
			wantAPIError(t, decodeError(resp), tt.status, tt.code)
			if list, _ := n.s.List(); len(list) != 0 {
				t.Errorf("List = %+v, want empty", list)
			}
			if got := tmpFiles(t, n.s); len(got) != 0 {
				t.Errorf("temporary files left: %q", got)
			}
		})
	}
}

func TestHTTPInvalidIDs(t *testing.T) {
	n := newNode(t, HandlerOptions{})
	long := strings.Repeat("a", 65)
	for _, tt := range []struct{ method, path string }{
		{"PUT", "/v1/chunks/..%2Fx"},
		{"PUT", "/v1/chunks/a%2Fb"},
		{"PUT", "/v1/chunks/" + long},
		{"GET", "/v1/chunks/..%2Fx"},
		{"GET", "/v1/chunks/a%20b"},
		{"DELETE", "/v1/chunks/a%2Fb"},
		{"GET", "/v1/chunks/" + long + "/verify"},
		{"POST", "/v1/chunks/" + long + "/replicate"},
	} {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, n.srv.URL+tt.path, strings.NewReader(`{"source":"127.0.0.1:1"}`))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			wantAPIError(t, decodeError(resp), http.StatusBadRequest, api.CodeInvalid)
		})
	}
	var c Client
	ctx := context.Background()
	for _, id := range []string{"", "../x", "a/b", long} {
		if _, err := c.Put(ctx, n.addr, id, "", strings.NewReader("x"), 1); !errors.Is(err, ErrInvalidID) {
			t.Errorf("Client.Put(%q) = %v, want %v", id, err, ErrInvalidID)
		}
		if _, err := c.Get(ctx, n.addr, id, "", 0); !errors.Is(err, ErrInvalidID) {
			t.Errorf("Client.Get(%q) = %v, want %v", id, err, ErrInvalidID)
		}
	}
}

func TestHTTPReplicate(t *testing.T) {
	ctx := context.Background()
	var c Client
	data := content(1, 3*bs+17)
	for _, tt := range []struct {
		name    string
		opt     HandlerOptions
		source  func(src *node) string
		req     func(sc api.StoredChunk) api.ReplicateRequest
		status  int // 0: success
		code    string
		corrupt bool // damage the source's copy first
	}{
		{name: "host:port", source: func(n *node) string { return n.addr },
			req: func(sc api.StoredChunk) api.ReplicateRequest {
				return api.ReplicateRequest{Length: sc.Length, CRC: sc.CRC}
			}},
		{name: "URL, no expectations", source: func(n *node) string { return n.srv.URL },
			req: func(api.StoredChunk) api.ReplicateRequest { return api.ReplicateRequest{} }},
		{name: "throttled", opt: HandlerOptions{ReplicateRate: 64 << 20}, source: func(n *node) string { return n.addr },
			req: func(sc api.StoredChunk) api.ReplicateRequest { return api.ReplicateRequest{CRC: sc.CRC} }},
		{name: "wrong CRC", source: func(n *node) string { return n.addr },
			req: func(sc api.StoredChunk) api.ReplicateRequest {
				return api.ReplicateRequest{Length: sc.Length, CRC: sc.CRC + 1}
			},
			status: http.StatusBadGateway, code: api.CodeConflict},
		{name: "wrong length", source: func(n *node) string { return n.addr },
			req:    func(sc api.StoredChunk) api.ReplicateRequest { return api.ReplicateRequest{Length: sc.Length - 1} },
			status: http.StatusBadGateway, code: api.CodeConflict},
		{name: "corrupt source", source: func(n *node) string { return n.addr }, corrupt: true,
			req:    func(api.StoredChunk) api.ReplicateRequest { return api.ReplicateRequest{} },
			status: http.StatusBadGateway, code: api.CodeUnavailable},
		{name: "unreachable source", source: func(*node) string { return "127.0.0.1:1" },
			req:    func(api.StoredChunk) api.ReplicateRequest { return api.ReplicateRequest{} },
			status: http.StatusBadGateway, code: api.CodeUnavailable},
		{name: "bad source", source: func(*node) string { return "ftp://x" },
			req:    func(api.StoredChunk) api.ReplicateRequest { return api.ReplicateRequest{} },
			status: http.StatusBadRequest, code: api.CodeInvalid},
	} {
		t.Run(tt.name, func(t *testing.T) {
			src, dst := newNode(t, HandlerOptions{}), newNode(t, tt.opt)
			sc := mustPut(t, src.s, "c", data)
			if tt.corrupt {
				flipByte(t, src.s.Path("c"), 1)
			}
			req := tt.req(sc)
			req.Source = tt.source(src)
			got, err := c.Replicate(ctx, dst.addr, "c", "", req)
			if tt.status != 0 {
				wantAPIError(t, err, tt.status, tt.code)
				if list, _ := dst.s.List(); len(list) != 0 {
					t.Errorf("List after a failed replication = %+v, want empty", list)
				}
				if got := tmpFiles(t, dst.s); len(got) != 0 {
					t.Errorf("temporary files left: %q", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Replicate: %v", err)
			}
			if got != sc {
				t.Errorf("Replicate = %+v, want %+v", got, sc)
			}
			if err := dst.s.Verify("c"); err != nil {
				t.Errorf("Verify of the copy: %v", err)
			}
		})
	}
}

// TestHTTPReplicateKeepsGoodCopy checks that a failed replication of a
// chunk the node already has leaves that copy alone, and that a repeated
// one succeeds without a pull.
func TestHTTPReplicateKeepsGoodCopy(t *testing.T) {
	ctx := context.Background()
	var c Client
	src, dst := newNode(t, HandlerOptions{}), newNode(t, HandlerOptions{})
	data := content(1, 2*bs)
	sc := mustPut(t, src.s, "c", data)
	mustPut(t, dst.s, "c", data)
	_, err := c.Replicate(ctx, dst.addr, "c", "", api.ReplicateRequest{Source: src.addr, CRC: sc.CRC + 1})
	wantAPIError(t, err, http.StatusBadGateway, api.CodeConflict)
	if got, err := dst.s.Stat("c"); err != nil || got != sc {
		t.Errorf("Stat after failed replication = %+v, %v; want %+v", got, err, sc)
	}
	src.srv.Close()
	got, err := c.Replicate(ctx, dst.addr, "c", "", api.ReplicateRequest{Source: src.addr, Length: sc.Length, CRC: sc.CRC})
	if err != nil || got != sc {
		t.Errorf("Replicate of a chunk already there = %+v, %v; want %+v", got, err, sc)
	}
}

// TestClientGetChecksWholeCRC serves bytes that do not match the CRC
// announced, as a flipped bit on the wire would: the client's read fails.
func TestClientGetChecksWholeCRC(t *testing.T) {
	data := content(1, 1000)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(CRCHeader, strconv.FormatUint(uint64(stored("c", data).CRC+1), 10))
		w.Write(data)
	}))
	defer srv.Close()
	var c Client
	r, err := c.Get(context.Background(), srv.URL, "c", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := io.ReadAll(r); !errors.Is(err, ErrCorrupt) {
		t.Errorf("ReadAll = %v, want %v", err, ErrCorrupt)
	}
}
