package agent

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/clusterpki"
)

// The peer channel: a second listener (Config.PeerAddr) on which the agent
// accepts mutual-TLS connections from the other nodes of its cluster. Its
// credentials (a key made here, a certificate the servers sign with the
// cluster's CA) are held in memory only, from when the node joins a
// cluster until it leaves it; without them every handshake is refused.
// Today it serves the remote launch of MPI daemons (mpi.go).

// credsRetry bounds the wait between attempts to get a certificate.
const credsRetry = 5 * time.Second

// listenPeer opens the peer listener and works out the address to
// advertise: the listener's, or, when it listens on every interface, the
// advertise address's host with the listener's port.
func (a *Agent) listenPeer() error {
	ln, err := net.Listen("tcp", a.cfg.PeerAddr)
	if err != nil {
		return fmt.Errorf("agent: listening for peers on %s: %w", a.cfg.PeerAddr, err)
	}
	a.peerLn = ln
	a.peerAdvertise = ln.Addr().String()
	host, port, _ := net.SplitHostPort(a.peerAdvertise)
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		if ahost, _, err := net.SplitHostPort(a.cfg.AdvertiseAddr); err == nil {
			a.peerAdvertise = net.JoinHostPort(ahost, port)
		}
	}
	return nil
}

// servePeer serves the peer API until the returned function is called.
func (a *Agent) servePeer() (stop func()) {
	cfg := clusterpki.ServerConfig(a.peerCreds.Load, a.authorizePeer)
	cfg.NextProtos = []string{"http/1.1"}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/peer/launch", a.handlePeerLaunch)
	// Refused handshakes are expected (nodes of other clusters, callers
	// without credentials): debug level.
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(a.log.With("listener", "peer").Handler(), slog.LevelDebug)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(tls.NewListener(a.peerLn, cfg))
	}()
	return func() {
		srv.Close()
		<-done
	}
}

// authorizePeer admits, at handshake time, only nodes of the cluster this
// node is in now (the credentials checked the CA and cluster name; this
// also refuses a handshake that races with leaving the cluster). Which
// node may do what is decided per request.
func (a *Agent) authorizePeer(id clusterpki.Identity) error {
	a.mu.Lock()
	cluster := a.cluster
	a.mu.Unlock()
	if cluster == "" || id.Cluster != cluster {
		return fmt.Errorf("agent: peer %s is not of this node's cluster %q", id, cluster)
	}
	if id.Node == a.cfg.Name {
		return fmt.Errorf("agent: peer %s claims this node's own name", id)
	}
	return nil
}

// setCluster records the node's cluster as the servers list it. When it
// changes, the credentials of the old one are dropped at once (so the
// peer listener refuses every handshake) and the credentials loop fetches
// those of the new one. Call with a.mu held.
func (a *Agent) setClusterLocked(cluster string) {
	if a.cluster == cluster {
		return
	}
	a.cluster = cluster
	a.peerCreds.Store(nil)
	a.credsRenew = time.Time{}
	select {
	case a.credsWake <- struct{}{}:
	default:
	}
}

// credsLoop holds credentials for the node's cluster: it fetches them when
// the node joins one, renews them when two thirds of their life has
// passed, and retries failures.
func (a *Agent) credsLoop() {
	for {
		a.mu.Lock()
		cluster, renew := a.cluster, a.credsRenew
		a.mu.Unlock()
		var wait <-chan time.Time
		switch cur := a.peerCreds.Load(); {
		case cluster == "":
			// Nothing to hold until the node joins a cluster.
		case cur != nil && cur.Cluster == cluster && time.Now().Before(renew):
			wait = time.After(time.Until(renew))
		default:
			if err := a.fetchCreds(cluster); err != nil {
				if a.ctx.Err() != nil {
					return
				}
				a.log.Warn("getting this node's certificate for its cluster; will retry", "cluster", cluster, "err", err)
				wait = time.After(credsRetry)
			} else {
				continue
			}
		}
		select {
		case <-a.ctx.Done():
			return
		case <-a.credsWake:
		case <-wait:
		}
	}
}

// fetchCreds makes a new key, has the servers sign it for cluster, and
// holds the credentials if the node is still in cluster.
func (a *Agent) fetchCreds(cluster string) error {
	key, csr, err := clusterpki.NewNodeKey(a.cfg.Name, rand.Reader)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
	defer cancel()
	nc, err := a.client.NodeCertificate(ctx, a.cfg.Name, &api.NodeCertificateRequest{CSR: string(csr)})
	if err != nil {
		return err
	}
	creds, err := clusterpki.NewCredentials(key, []byte(nc.Cert), []byte(nc.CA))
	if err != nil {
		return fmt.Errorf("the servers' certificate is unusable: %w", err)
	}
	if creds.Node != a.cfg.Name {
		return fmt.Errorf("the servers signed a certificate for node %q, this is %q", creds.Node, a.cfg.Name)
	}
	now := time.Now()
	if !creds.NotAfter.After(now) {
		return fmt.Errorf("the servers signed a certificate that expired at %s", creds.NotAfter)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cluster != creds.Cluster {
		return fmt.Errorf("got a certificate for cluster %q, the node is now in %q", creds.Cluster, a.cluster)
	}
	a.peerCreds.Store(creds)
	a.credsRenew = now.Add(creds.NotAfter.Sub(now) * 2 / 3)
	a.log.Info("holding credentials for the node's cluster", "cluster", creds.Cluster, "not_after", creds.NotAfter)
	return nil
}

// peerClient returns an HTTP client that reaches node's peer listener
// with this node's credentials, or an error when it holds none.
func (a *Agent) peerClient(node string) (*http.Client, error) {
	creds := a.peerCreds.Load()
	if creds == nil {
		return nil, errors.New("this node holds no credentials for its cluster yet")
	}
	cfg := clusterpki.ClientConfig(creds, node)
	cfg.NextProtos = []string{"http/1.1"}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true,
		TLSHandshakeTimeout: 10 * time.Second}}, nil
}
