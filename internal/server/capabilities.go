package server

import (
	"crypto/rand"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/capability"
	"github.com/shoal-dev/shoal/internal/fsm"
	"github.com/shoal-dev/shoal/internal/state"
)

// DefaultCapabilityTTL is how long the capabilities that servers hand out
// (to read, write or delete a chunk, or read a task's logs) stay valid: a
// data node checks one when a request starts, so it must outlast the wait
// between the grant and the request, not the transfer itself.
const DefaultCapabilityTTL = 10 * time.Minute

// capabilityKeyID names the one signing key the servers keep today.
const capabilityKeyID = "1"

// capIssuer caches the issuer made from the state's capability key, so
// that the key is derived from its seed once.
type capIssuer struct {
	mu     sync.Mutex
	index  uint64 // CreateIndex of the key issuer was made from
	issuer *capability.Issuer
}

// ensureCapabilityKey proposes the servers' capability signing key when
// the state has none: the leader draws its seed from Config.Rand and the
// Raft entry carries it, so that every server signs with the same key.
// Only the first key proposed is kept (see state.SetCapabilityKey). It
// tries every second until the key exists or stop is closed.
func (s *Server) ensureCapabilityKey(stop chan struct{}) {
	for len(s.store.Snapshot().CapabilityKeys(nil)) == 0 {
		seed := make([]byte, 32)
		_, err := io.ReadFull(s.rand, seed)
		if err == nil {
			req := &state.CapabilityKeyRequest{Key: state.CapabilityKey{ID: capabilityKeyID, Seed: seed}}
			if _, _, err = s.apply(fsm.CapabilityKey, req); err == nil {
				s.log.Info("made the capability signing key")
				return
			}
		}
		s.log.Warn("making the capability key failed; data nodes refuse chunk requests until it exists", "err", err)
		select {
		case <-stop:
			return
		case <-time.After(time.Second):
		}
	}
}

// issuer returns an issuer signing with the state's newest capability key,
// or nil while there is none.
func (s *Server) issuer() *capability.Issuer {
	keys := s.store.Snapshot().CapabilityKeys(nil)
	if len(keys) == 0 {
		return nil
	}
	k := keys[len(keys)-1]
	s.caps.mu.Lock()
	defer s.caps.mu.Unlock()
	if s.caps.issuer == nil || s.caps.index != k.CreateIndex {
		priv, err := capability.KeyFromSeed(k.Seed)
		if err != nil {
			s.log.Error("the capability key in the state is unusable", "err", err)
			return nil
		}
		s.caps.issuer, s.caps.index = capability.NewIssuer(priv, s.now), k.CreateIndex
	}
	return s.caps.issuer
}

// capability returns a capability for op on target (a chunk id, or a task
// id for logs) for a caller of cluster ("" for an operator), or "" while
// the servers have no key.
func (s *Server) capability(op capability.Op, target, cluster string) string {
	is := s.issuer()
	if is == nil {
		return ""
	}
	return is.Issue(op, target, cluster, s.cfg.CapabilityTTL)
}

// capabilityKeys returns the public keys agents check capabilities with.
func (s *Server) capabilityKeys(keys []*state.CapabilityKey) []string {
	var out []string
	for _, k := range keys {
		priv, err := capability.KeyFromSeed(k.Seed)
		if err != nil {
			continue
		}
		out = append(out, capability.EncodeKey(capability.NewIssuer(priv, s.now).PublicKey()))
	}
	return out
}

// grantReads gives each chunk of fi, a file the path checks allowed the
// caller to read, a read capability for that caller.
func (s *Server) grantReads(r *http.Request, fi *api.FileInfo) *api.FileInfo {
	cluster := principalOf(r).Cluster
	for i := range fi.Chunks {
		fi.Chunks[i].Capability = s.capability(capability.OpRead, fi.Chunks[i].ID, cluster)
	}
	return fi
}

// handleAllocate allocates a chunk (or more replicas of one being
// written) and gives the writer a write capability for it, valid on every
// replica, and a read capability for replacement replicas to copy it.
func (s *Server) handleAllocate(w http.ResponseWriter, r *http.Request) {
	var b api.ChunkAllocate
	if !decodeBody(w, r, &b) || !allowPaths(w, r, fsPaths(&b)...) {
		return
	}
	v, idx, err := s.apply(fsm.FSAllocate, &state.FSAllocateRequest{Req: b, Now: s.now(), Nonce: rand.Text()})
	if err != nil {
		writeErr(w, err)
		return
	}
	if a, ok := v.(*api.ChunkAllocation); ok && a != nil {
		cluster := principalOf(r).Cluster
		a.Capability = s.capability(capability.OpWrite, a.ID, cluster)
		a.ReadCapability = s.capability(capability.OpRead, a.ID, cluster)
	}
	respondWrite(w, idx, v)
}
