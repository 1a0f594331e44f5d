package server

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/clusterpki"
	"github.com/shoal-dev/shoal/internal/fsm"
	"github.com/shoal-dev/shoal/internal/state"
)

// The control-plane side of mpi jobs besides scheduling: nodes' cluster
// certificates (the remote-launch channel between the nodes of a cluster
// is mutual TLS with them) and checkpoint epochs.

// NodeCertTTL is how long a node's certificate in its cluster is valid;
// agents renew it well before.
const NodeCertTTL = 24 * time.Hour

func (s *Server) mpiRoutes(read, write, tenantRead func(string, http.HandlerFunc)) {
	write("POST /v1/nodes/{name}/certificate", s.handleNodeCertificate)
	write("PUT /v1/nodes/{name}/checkpoints", s.handleCheckpointReport)
	tenantRead("GET /v1/jobs/{id}/checkpoints", s.handleJobCheckpoints)
}

// newClusterCA makes a CA for a new cluster. It runs on the server that
// received the request, never in the FSM, which must stay deterministic.
func (s *Server) newClusterCA(cluster string) (*state.ClusterCA, error) {
	ca, err := clusterpki.NewCA(cluster, s.rand, s.now())
	if err != nil {
		return nil, err
	}
	return &state.ClusterCA{Cluster: cluster, CertPEM: ca.CertPEM, KeyPEM: ca.KeyPEM}, nil
}

// handleNodeCertificate signs a node's key for the cluster it is a member
// of now. A node in the pool gets nothing: credentials come with
// membership, and a node that leaves a cluster stops being trusted by its
// members (they check the peer is in their gang) and gets no renewal.
func (s *Server) handleNodeCertificate(w http.ResponseWriter, r *http.Request) {
	var req api.NodeCertificateRequest
	if !decodeBody(w, r, &req) {
		return
	}
	name := r.PathValue("name")
	snap := s.store.Snapshot()
	n := snap.Node(nil, name)
	if n == nil {
		writeErr(w, fmt.Errorf("%w: no node named %q", state.ErrNotFound, name))
		return
	}
	if n.Cluster == "" {
		writeErr(w, fmt.Errorf("%w: node %s is in no cluster, so it has no cluster credentials", state.ErrConflict, name))
		return
	}
	rec := snap.ClusterCA(nil, n.Cluster)
	if rec == nil {
		// A cluster created before clusters had CAs gets one now.
		ca, err := s.newClusterCA(n.Cluster)
		if err == nil {
			_, _, err = s.apply(fsm.ClusterCA, &state.ClusterCARequest{CA: *ca})
		}
		if err != nil {
			writeErr(w, err)
			return
		}
		if rec = s.store.Snapshot().ClusterCA(nil, n.Cluster); rec == nil {
			writeErr(w, fmt.Errorf("%w: cluster %s is gone", state.ErrNotFound, n.Cluster))
			return
		}
	}
	ca := &clusterpki.CA{CertPEM: rec.CertPEM, KeyPEM: rec.KeyPEM}
	cert, notAfter, err := ca.SignNode([]byte(req.CSR), n.Cluster, name, s.rand, s.now(), NodeCertTTL)
	if errors.Is(err, clusterpki.ErrBadCSR) {
		err = fmt.Errorf("%w: csr: %v", state.ErrInvalid, err)
	}
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, &api.NodeCertificate{Cluster: n.Cluster, Node: name, Cert: string(cert),
		CA: string(rec.CertPEM), NotAfter: notAfter})
}

func (s *Server) handleCheckpointReport(w http.ResponseWriter, r *http.Request) {
	var rep api.CheckpointReport
	if !decodeBody(w, r, &rep) {
		return
	}
	s.write(w, fsm.CheckpointReport, &state.CheckpointReportRequest{Node: r.PathValue("name"), Report: rep, Now: s.now()})
}

func (s *Server) handleJobCheckpoints(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.query(w, r, []string{state.TableJobs, state.TableCheckpoints}, func(snap *state.Snapshot, ws memdb.WatchSet) (any, error) {
		j := snap.Job(ws, id)
		if j == nil || !principalOf(r).Sees(j.Cluster) {
			return nil, fmt.Errorf("%w: no job named %q", state.ErrNotFound, id)
		}
		if j.Type != api.JobMPI {
			return nil, fmt.Errorf("%w: job %s is a %s job; only mpi jobs have checkpoints", state.ErrInvalid, id, j.Type)
		}
		out := snap.Checkpoints(ws, id)
		if out == nil {
			out = []*api.Checkpoint{}
		}
		return out, nil
	})
}
