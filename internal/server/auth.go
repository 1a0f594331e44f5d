package server

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/httpapi"
)

// principal is who a request acts for (see httpapi.Principal).
type principal = httpapi.Principal

// principalOf returns the request's principal; every route but the
// Signed ones has one (authenticate sets it).
func principalOf(r *http.Request) principal {
	p, _ := httpapi.PrincipalOf(r)
	return p
}

// authenticate resolves the request's bearer token to a principal:
//   - the operator token (Config.Token) is an operator;
//   - a cluster's token is that cluster;
//   - no token is an operator only when the installation has no operator
//     token (an open installation, as `shoal dev` runs by default);
//   - anything else is refused with 401, even on an open installation, so
//     that a mistyped cluster token never silently acts as an operator.
func (s *Server) authenticate(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := bearerToken(r)
		if !ok {
			s.metrics.refused.WithLabelValues("token", "malformed").Inc()
			writeError(w, http.StatusUnauthorized, api.CodeUnauthorized, `the Authorization header must be "Bearer TOKEN"`)
			return
		}
		var p principal
		switch {
		case token == "" && s.cfg.Token == "":
		case token == "":
			s.metrics.refused.WithLabelValues("token", "missing").Inc()
			writeError(w, http.StatusUnauthorized, api.CodeUnauthorized, "this installation requires a token: pass --token or set SHOAL_TOKEN")
			return
		case s.cfg.Token != "" && subtle.ConstantTimeCompare([]byte(token), []byte(s.cfg.Token)) == 1:
		default:
			c := s.store.Snapshot().ClusterByToken(token)
			if c == nil {
				s.metrics.refused.WithLabelValues("token", "unknown").Inc()
				writeError(w, http.StatusUnauthorized, api.CodeUnauthorized, "the token is not valid here: it is neither the operator token nor a cluster's token")
				return
			}
			p.Cluster = c.Name
		}
		h.ServeHTTP(w, r.WithContext(httpapi.WithPrincipal(r.Context(), p)))
	})
}

// bearerToken returns the request's bearer token, "" when it has none, and
// false when the Authorization header is present but malformed.
func bearerToken(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return "", true
	}
	scheme, token, found := strings.Cut(h, " ")
	if !found || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
		return "", false
	}
	return strings.TrimSpace(token), true
}

// operatorOnly refuses h to cluster tokens.
func operatorOnly(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if p := principalOf(r); !p.Operator() {
			writeError(w, http.StatusForbidden, api.CodeForbidden, fmt.Sprintf(
				"the token of cluster %q may not use %s %s; it is for the cluster's jobs and files only", p.Cluster, r.Method, r.URL.Path))
			return
		}
		h(w, r)
	}
}

// allowPaths checks that a cluster principal names only paths inside its
// cluster's directory, writing a 403 naming the first that is not. Paths
// that are not valid at all are left for the handler to refuse with its
// own 400, so that the error names the real problem.
func allowPaths(w http.ResponseWriter, r *http.Request, paths ...string) bool {
	p := principalOf(r)
	if p.Operator() {
		return true
	}
	root := api.ClusterRoot(p.Cluster)
	for _, path := range paths {
		clean, err := api.CleanPath("path", path)
		if err != nil {
			continue
		}
		if !api.WithinDir(clean, root) {
			writeError(w, http.StatusForbidden, api.CodeForbidden, fmt.Sprintf(
				"%s is outside %s, the only part of the file system the token of cluster %q may use", clean, root, p.Cluster))
			return false
		}
	}
	return true
}

// allowCluster checks that the principal may act on cluster, writing a 403
// otherwise.
func allowCluster(w http.ResponseWriter, r *http.Request, cluster string) bool {
	p := principalOf(r)
	if p.Sees(cluster) {
		return true
	}
	writeError(w, http.StatusForbidden, api.CodeForbidden, fmt.Sprintf(
		"the token of cluster %q may not act on cluster %q", p.Cluster, cluster))
	return false
}

// fsPaths returns the file system paths a namespace request names.
func fsPaths(req any) []string {
	switch b := req.(type) {
	case *api.Mkdir:
		return []string{b.Path}
	case *api.FileCreate:
		return []string{b.Path}
	case *api.ChunkAllocate:
		return []string{b.Path}
	case *api.ChunkCommit:
		return []string{b.Path}
	case *api.FileClose:
		return []string{b.Path}
	case *api.FileAbort:
		return []string{b.Path}
	case *api.FileRenew:
		return []string{b.Path}
	case *api.Remove:
		return []string{b.Path}
	case *api.Rename:
		return []string{b.From, b.To}
	case *api.SnapshotRequest:
		return []string{b.Dir}
	}
	panic(fmt.Sprintf("server: fsPaths: no paths known for %T", req))
}

// newToken returns a fresh random API token.
func newToken() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("server: drawing a token: %w", err)
	}
	return "shoal-" + hex.EncodeToString(b), nil
}
