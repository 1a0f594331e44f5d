package functions

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/http"
	"strconv"
	"strings"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/fsm"
	"github.com/shoal-dev/shoal/internal/httpapi"
	"github.com/shoal-dev/shoal/internal/state"
)

// maxDeployBody is the largest deploy body: a bundle of MaxBundleBytes in
// base64 plus room for the configuration.
const maxDeployBody = (api.MaxBundleBytes+2)/3*4 + 1<<20

// BundlePath returns the DFS path of a cluster's function bundle with the
// given SHA-256 digest (hex). Bundles are named by their content, so a
// version that reuses a bundle reuses its file.
func BundlePath(cluster, function, sha string) string {
	return api.ClusterRoot(cluster) + "/.functions/" + function + "/" + sha + ".zip"
}

// bundleDir returns the DFS directory of a function's bundles.
func bundleDir(cluster, function string) string {
	return api.ClusterRoot(cluster) + "/.functions/" + function
}

// handleDeploy serves PUT /v1/clusters/{cluster}/functions/{name}: it
// adds a version to the function (creating it unless the body says
// Update) and answers with the function. Everything is checked before
// anything changes: the name, the caller's right to the cluster (403),
// the cluster (404), the body's cluster, the configuration and the bundle
// (400; 413 when too large); then the bundle is stored and the version
// applied through Raft. A bundle stored for a version that Raft then
// refused is removed again.
func (s *Service) handleDeploy(w http.ResponseWriter, r *http.Request) {
	cluster, name := r.PathValue("cluster"), r.PathValue("name")
	if err := api.ValidateFunctionName("name", name); err != nil {
		httpapi.WriteErr(w, err)
		return
	}
	if !allowCluster(w, r, cluster) {
		return
	}
	snap := s.cfg.Store.Snapshot()
	if snap.Cluster(nil, cluster) == nil {
		httpapi.WriteErr(w, fmt.Errorf("%w: no cluster named %q", state.ErrNotFound, cluster))
		return
	}
	var req api.FunctionDeploy
	if !httpapi.DecodeBody(w, r, &req, maxDeployBody) {
		return
	}
	old := snap.Function(nil, cluster, name)
	v, err := s.prepareVersion(cluster, name, &req, old)
	if err != nil {
		httpapi.WriteErr(w, err)
		return
	}
	wrote := false
	if len(req.Zip) > 0 && !hasBundle(old, v.SHA256) {
		if _, err := s.cfg.WriteBundle(r.Context(), v.Bundle, req.Zip); err != nil {
			httpapi.WriteErr(w, fmt.Errorf("%w: storing the bundle at %s: %w", httpapi.ErrUnavailable, v.Bundle, err))
			return
		}
		wrote = true
	}
	out, idx, err := s.cfg.Apply(fsm.FunctionDeploy, &state.FunctionDeployRequest{Cluster: cluster, Name: name,
		Version: *v, Update: req.Update, Now: s.now()})
	if err != nil {
		if wrote {
			s.removeBundles(context.WithoutCancel(r.Context()), v.Bundle)
		}
		httpapi.WriteErr(w, err)
		return
	}
	f := out.(*api.Function)
	s.log.Info("function deployed", "cluster", cluster, "function", name, "version", f.Latest, "sha256", v.SHA256)
	w.Header().Set(api.IndexHeader, strconv.FormatUint(idx, 10))
	httpapi.WriteJSON(w, http.StatusOK, f)
}

// prepareVersion checks a deploy request against the function as it is
// (old, nil when it does not exist) and returns the version to apply,
// its configuration resolved.
func (s *Service) prepareVersion(cluster, name string, req *api.FunctionDeploy, old *api.Function) (*api.FunctionVersion, error) {
	if req.Cluster != "" && req.Cluster != cluster {
		return nil, fmt.Errorf("%w: cluster: the body names cluster %q but the path names %q", api.ErrInvalid, req.Cluster, cluster)
	}
	if err := req.Config.Validate(); err != nil {
		return nil, err
	}
	if req.Update && old == nil {
		return nil, fmt.Errorf("%w: function %s in cluster %s does not exist; deploy it first", state.ErrNotFound, name, cluster)
	}
	var latest *api.FunctionVersion
	if old != nil {
		latest = old.Version(0)
	}
	cfg := req.Config
	if req.KeepConfig && latest != nil {
		cfg = mergeConfig(latest.Config, req.Config)
		if err := cfg.Validate(); err != nil {
			return nil, err
		}
	}
	v := &api.FunctionVersion{Config: cfg.Resolved()}
	if len(req.Zip) == 0 {
		if !req.Update || latest == nil {
			return nil, fmt.Errorf("%w: zip: a deploy needs a bundle (a zip with an executable %q at its root); only an update may reuse the latest one",
				api.ErrInvalid, api.BundleBootstrap)
		}
		v.Bundle, v.SHA256, v.Size = latest.Bundle, latest.SHA256, latest.Size
		return v, nil
	}
	if err := checkBundle(req.Zip); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(req.Zip)
	v.SHA256 = hex.EncodeToString(sum[:])
	v.Size = int64(len(req.Zip))
	v.Bundle = BundlePath(cluster, name, v.SHA256)
	return v, nil
}

// checkBundle checks that zb is a zip of at most MaxBundleBytes holding a
// regular file "bootstrap" at its root.
func checkBundle(zb []byte) error {
	if len(zb) > api.MaxBundleBytes {
		return fmt.Errorf("%w: zip: the bundle is %d bytes; at most %d are allowed", httpapi.ErrTooLarge, len(zb), api.MaxBundleBytes)
	}
	zr, err := zip.NewReader(bytes.NewReader(zb), int64(len(zb)))
	if err != nil {
		return fmt.Errorf("%w: zip: the bundle is not a zip archive: %v", api.ErrInvalid, err)
	}
	if err := api.CheckBundleSize(zr.File); err != nil {
		return err
	}
	for _, f := range zr.File {
		if strings.TrimPrefix(strings.TrimSuffix(f.Name, "/"), "./") != api.BundleBootstrap {
			continue
		}
		mode := f.Mode()
		switch {
		case mode.IsDir() || strings.HasSuffix(f.Name, "/"):
			return fmt.Errorf("%w: zip: %s at the bundle's root is a directory; it must be an executable file", api.ErrInvalid, api.BundleBootstrap)
		case mode&fs.ModeSymlink != 0:
			return fmt.Errorf("%w: zip: %s at the bundle's root is a symbolic link; it must be a regular executable file", api.ErrInvalid, api.BundleBootstrap)
		case !mode.IsRegular():
			return fmt.Errorf("%w: zip: %s at the bundle's root is not a regular file (mode %s)", api.ErrInvalid, api.BundleBootstrap, mode)
		}
		return nil
	}
	return fmt.Errorf("%w: zip: the bundle has no %q at its root; it must hold the executable that starts the function's runtime",
		api.ErrInvalid, api.BundleBootstrap)
}

// mergeConfig returns base with the fields that set sets replaced.
func mergeConfig(base, set api.FunctionConfig) api.FunctionConfig {
	if set.Handler != "" {
		base.Handler = set.Handler
	}
	if set.MemoryMiB != 0 {
		base.MemoryMiB = set.MemoryMiB
	}
	if set.Timeout != 0 {
		base.Timeout = set.Timeout
	}
	if set.Concurrency != 0 {
		base.Concurrency = set.Concurrency
	}
	if set.Provisioned != "" {
		base.Provisioned = set.Provisioned
	}
	if set.Env != nil {
		base.Env = set.Env
	}
	if set.Retries != nil {
		base.Retries = set.Retries
	}
	return base
}

// hasBundle reports whether a version of f already uses the bundle with
// digest sha (its file is then stored).
func hasBundle(f *api.Function, sha string) bool {
	if f == nil {
		return false
	}
	for _, v := range f.Versions {
		if v.SHA256 == sha {
			return true
		}
	}
	return false
}

// removeBundles removes bundle files, best effort: a file left behind
// wastes space but breaks nothing.
func (s *Service) removeBundles(ctx context.Context, paths ...string) {
	if s.cfg.RemoveBundle == nil {
		return
	}
	for _, p := range paths {
		if err := s.cfg.RemoveBundle(ctx, p); err != nil {
			s.log.Warn("removing a function bundle", "path", p, "err", err)
		}
	}
}
