package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/http/pprof"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/httpapi"
	"github.com/shoal-dev/shoal/internal/state"
	"github.com/shoal-dev/shoal/internal/tlsfiles"
)

// Blocking queries wait at most this long.
const (
	defaultWait = 30 * time.Second
	maxWait     = 10 * time.Minute
)

func (s *Server) setupHTTP() error {
	ln, err := net.Listen("tcp", s.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("server: listening on %s: %w", s.cfg.HTTPAddr, err)
	}
	if s.cfg.TLS != nil {
		conf, err := s.cfg.TLS.ServerConfig("")
		if err != nil {
			ln.Close()
			return fmt.Errorf("server: %w", err)
		}
		ln = tls.NewListener(ln, conf)
	}
	s.httpLn = ln
	s.http = &http.Server{Handler: s.routes(), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: nil}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("http server", "err", err)
		}
	}()
	return nil
}

// routes builds the API. Every route is for operators only unless it is
// registered as a tenant route, whose handler confines a cluster's token
// to that cluster itself (see auth.go): what is not explicitly opened to
// clusters stays closed to them.
func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	read := func(pattern string, h http.HandlerFunc) { mux.HandleFunc(pattern, operatorOnly(h)) }
	// write routes are served by the leader; followers forward them.
	write := func(pattern string, h http.HandlerFunc) {
		mux.HandleFunc(pattern, operatorOnly(s.forwardToLeader(h)))
	}
	tenantRead := func(pattern string, h http.HandlerFunc) { mux.HandleFunc(pattern, h) }
	tenantWrite := func(pattern string, h http.HandlerFunc) { mux.HandleFunc(pattern, s.forwardToLeader(h)) }

	tenantRead("GET /v1/status/leader", s.handleLeader)
	tenantRead("GET /v1/status/peers", s.handlePeers)
	tenantRead("GET /v1/status/servers", s.handleServers)
	tenantRead("GET /v1/status/self", s.handleSelf)
	write("POST /v1/status/join", s.handleJoin)
	write("POST /v1/status/register", s.handleRegisterServer)

	read("GET /v1/nodes", s.handleNodes)
	read("GET /v1/nodes/{name}", s.handleNode)
	read("GET /v1/nodes/{name}/work", s.handleNodeWork)
	write("PUT /v1/nodes/{name}", s.handleNodeRegister)
	write("PUT /v1/nodes/{name}/heartbeat", s.handleHeartbeat)
	write("PUT /v1/nodes/{name}/tasks", s.handleTaskUpdates)
	write("PUT /v1/nodes/{name}/drain", s.handleDrain)
	read("GET /v1/pool", s.handlePool)

	tenantRead("GET /v1/clusters", s.handleClusters)
	tenantRead("GET /v1/clusters/{name}", s.handleCluster)
	write("POST /v1/clusters", s.handleClusterCreate)
	write("PUT /v1/clusters/{name}", s.handleClusterResize)
	write("DELETE /v1/clusters/{name}", s.handleClusterDelete)
	write("POST /v1/clusters/{name}/token", s.handleClusterToken)

	tenantRead("GET /v1/jobs", s.handleJobs)
	tenantRead("GET /v1/jobs/{id}", s.handleJob)
	tenantRead("GET /v1/jobs/{id}/tasks", s.handleJobTasks)
	tenantRead("GET /v1/jobs/{id}/logs", s.handleLogs)
	tenantWrite("POST /v1/jobs", s.handleJobSubmit)
	tenantWrite("DELETE /v1/jobs/{id}", s.handleJobCancel)

	s.fsRoutes(read, write, tenantRead, tenantWrite)
	s.mpiRoutes(read, write, tenantRead)

	// Subsystems register their own routes; signed routes (AWS SigV4)
	// skip bearer-token authentication when the request is signed.
	signed := http.NewServeMux()
	router := &httpapi.Router{Read: read, Write: write, TenantRead: tenantRead, TenantWrite: tenantWrite,
		TenantUpload: func(pattern string, limit int64, h http.HandlerFunc) {
			mux.HandleFunc(pattern, s.forwardLimited(h, limit))
		},
		Signed: func(pattern string, h http.HandlerFunc) {
			mux.HandleFunc(pattern, h)
			signed.HandleFunc(pattern, h)
		}}
	for _, sub := range s.subsystems {
		sub.Routes(router)
	}

	read("GET /metrics", s.metrics.handler().ServeHTTP)
	if s.cfg.EnableDebug {
		read("/debug/pprof/", pprof.Index)
		read("/debug/pprof/profile", pprof.Profile)
		read("/debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	authenticated := s.requireAgentCert(s.authenticate(mux))
	return s.recoverPanics(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isSigV4(r) {
			if _, pattern := signed.Handler(r); pattern != "" {
				signed.ServeHTTP(w, r)
				return
			}
		}
		authenticated.ServeHTTP(w, r)
	}))
}

// isSigV4 reports whether r is signed with AWS Signature Version 4 in its
// Authorization header.
func isSigV4(r *http.Request) bool {
	return strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 ")
}

// recoverPanics turns a handler panic into a 500 so that no request can
// take the server down.
func (s *Server) recoverPanics(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil && v != http.ErrAbortHandler {
				s.log.Error("panic in handler", "path", r.URL.Path, "panic", v)
				writeError(w, http.StatusInternalServerError, api.CodeInternal, "internal error")
			}
		}()
		h.ServeHTTP(w, r)
	})
}

// forwardToLeader serves h on the leader and proxies the request to the
// leader elsewhere. While there is no leader (an election), or the leader
// this server knows cannot be reached or has just lost leadership, it
// retries for a few seconds. Only failures that prove the request was not
// applied are retried, so a write is never applied twice.
func (s *Server) forwardToLeader(h http.HandlerFunc) http.HandlerFunc {
	return s.forwardLimited(h, api.MaxBodyBytes)
}

// forwardLimited is forwardToLeader for a route whose bodies may reach
// limit bytes; what is longer reaches the handler cut at limit+1 bytes,
// for it to refuse.
func (s *Server) forwardLimited(h http.HandlerFunc, limit int64) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(forwardedHeader) != "" && !s.IsLeader() {
			w.Header().Set(notLeaderHeader, "1")
			writeError(w, http.StatusServiceUnavailable, api.CodeNoLeader, "leadership changed while forwarding; retry")
			return
		}
		var body []byte
		if r.Body != nil {
			b, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
			if err != nil {
				writeError(w, http.StatusBadRequest, api.CodeInvalid, "reading request body: "+err.Error())
				return
			}
			body = b
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			r.Body = io.NopCloser(bytes.NewReader(body))
			if s.IsLeader() {
				h(w, r)
				return
			}
			if addr := s.leaderHTTP(); addr != "" && s.proxy(w, r, addr, time.Now().Before(deadline)) {
				return
			}
			if time.Now().After(deadline) {
				writeError(w, http.StatusServiceUnavailable, api.CodeNoLeader, "no Raft leader; the control plane has lost its quorum or is electing one")
				return
			}
			select {
			case <-r.Context().Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
}

const (
	forwardedHeader = "X-Shoal-Forwarded"
	notLeaderHeader = "X-Shoal-Not-Leader"
)

var errRetryForward = errors.New("server: forward target is not the leader")

// proxy forwards r to the leader at addr. It reports false, having written
// nothing, when the request may be retried: the leader could not be dialed
// or answered that it no longer leads. With canRetry false every outcome
// is written.
func (s *Server) proxy(w http.ResponseWriter, r *http.Request, addr string, canRetry bool) bool {
	retry := false
	p := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(&url.URL{Scheme: s.scheme(), Host: addr})
			pr.Out.Header.Set(forwardedHeader, s.cfg.Name)
		},
		ModifyResponse: func(resp *http.Response) error {
			if canRetry && resp.Header.Get(notLeaderHeader) != "" {
				resp.Body.Close()
				return errRetryForward
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			var op *net.OpError
			if canRetry && (errors.Is(err, errRetryForward) || (errors.As(err, &op) && op.Op == "dial")) {
				retry = true
				return
			}
			writeError(w, http.StatusServiceUnavailable, api.CodeUnavailable, "forwarding to the leader failed: "+err.Error())
		},
		FlushInterval: -1,
		Transport:     s.peerTransport(tlsfiles.RoleServer),
	}
	p.ServeHTTP(w, r)
	return !retry
}

func writeJSON(w http.ResponseWriter, status int, v any) { httpapi.WriteJSON(w, status, v) }

func writeError(w http.ResponseWriter, status int, code, msg string) {
	httpapi.WriteError(w, status, code, msg)
}

// writeErr maps an error to its HTTP status and stable code through the
// one error table (package httpapi).
func writeErr(w http.ResponseWriter, err error) { httpapi.WriteErr(w, err) }

// decodeBody reads a JSON body strictly (see httpapi.DecodeBody).
func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	return httpapi.DecodeBody(w, r, v, api.MaxBodyBytes)
}

// query runs a read, blocking while the state index is not above ?index=.
// fn fills ws with what it read and returns the result.
func (s *Server) query(w http.ResponseWriter, r *http.Request, tables []string,
	fn func(snap *state.Snapshot, ws memdb.WatchSet) (any, error)) {
	var minIndex uint64
	if v := r.URL.Query().Get("index"); v != "" {
		i, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, api.CodeInvalid, fmt.Sprintf("index: %q is not a non-negative integer", v))
			return
		}
		minIndex = i
	}
	wait := defaultWait
	if v := r.URL.Query().Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			writeError(w, http.StatusBadRequest, api.CodeInvalid, fmt.Sprintf("wait: %q is not a duration such as 30s", v))
			return
		}
		wait = min(d, maxWait)
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	for {
		snap := s.store.Snapshot()
		ws := memdb.NewWatchSet()
		snap.WatchTables(ws) // only the abandon channel: wake on restore
		out, err := fn(snap, ws)
		idx := snap.Index(tables...)
		if err != nil {
			writeErr(w, err)
			return
		}
		if idx > minIndex || minIndex == 0 || !state.Wait(ctx, ws) {
			if r.Context().Err() != nil {
				return
			}
			w.Header().Set(api.IndexHeader, strconv.FormatUint(max(idx, 1), 10))
			writeJSON(w, http.StatusOK, out)
			return
		}
	}
}

// respondWrite answers a successful write.
func respondWrite(w http.ResponseWriter, index uint64, v any) {
	w.Header().Set(api.IndexHeader, strconv.FormatUint(index, 10))
	if v == nil {
		v = api.WriteResponse{Index: index}
	}
	writeJSON(w, http.StatusOK, v)
}
