package fnqueue

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// startServer starts the embedded NATS server.
func (q *Queue) startServer() error {
	cfg := q.cfg
	if cfg.Name == "" || cfg.DataDir == "" {
		return errors.New("fnqueue: an embedded server needs a name and a data directory")
	}
	o := &server.Options{
		ServerName:             cfg.Name,
		DontListen:             true,
		NoSigs:                 true,
		JetStream:              true,
		StoreDir:               filepath.Join(cfg.DataDir, "nats"),
		SyncAlways:             !cfg.noSync,
		MaxPayload:             maxMsgBytes,
		DisableJetStreamBanner: true,
	}
	if len(cfg.Routes) > 0 {
		if cfg.Listen == "" {
			return errors.New("fnqueue: routes need a listen address")
		}
		host, port, err := splitHostPort(cfg.Listen)
		if err != nil {
			return err
		}
		o.Cluster = server.ClusterOpts{Name: clusterName, Host: host, Port: port}
		if cfg.ServerTLS != nil {
			o.Cluster.TLSConfig = routeTLS(cfg.ServerTLS, cfg.ClientTLS)
			o.Cluster.TLSTimeout = 5
		}
		routes, err := routeURLs(cfg.Routes)
		if err != nil {
			return err
		}
		o.Routes = routes
		// nats-server starts routes only once its client accept loop runs
		// (StartRouting waits for it), so a clustered server cannot use
		// DontListen: it listens on loopback, on a random port, behind a
		// random token that only this process knows.
		tok := make([]byte, 32)
		if _, err := rand.Read(tok); err != nil {
			return fmt.Errorf("fnqueue: %w", err)
		}
		o.DontListen, o.Host, o.Port, o.Authorization = false, "127.0.0.1", server.RANDOM_PORT, hex.EncodeToString(tok)
	}
	ns, err := server.NewServer(o)
	if err != nil {
		return fmt.Errorf("fnqueue: %w", err)
	}
	nl := &natsLogger{log: q.log.With("nats", cfg.Name)}
	ns.SetLoggerV2(nl, false, false, false)
	ns.Start()
	// A fatal error (JetStream could not start, say) does not stop the
	// server: look for one while waiting and once it is ready.
	for deadline := time.Now().Add(30 * time.Second); ; {
		ready := ns.ReadyForConnections(100 * time.Millisecond)
		if f := nl.fatal.Load(); f != nil {
			ns.Shutdown()
			return fmt.Errorf("fnqueue: the embedded NATS server failed: %s", *f)
		}
		if ready {
			break
		}
		if time.Now().After(deadline) {
			ns.Shutdown()
			return errors.New("fnqueue: the embedded NATS server did not start within 30s")
		}
	}
	q.ns, q.opts = ns, o
	return nil
}

func splitHostPort(hp string) (string, int, error) {
	host, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, fmt.Errorf("fnqueue: route address %q: %w", hp, err)
	}
	var port int
	if _, err := fmt.Sscanf(p, "%d", &port); err != nil || port <= 0 || port > 65535 {
		return "", 0, fmt.Errorf("fnqueue: route address %q: bad port", hp)
	}
	return host, port, nil
}

func routeURLs(routes []string) ([]*url.URL, error) {
	var us []*url.URL
	for _, r := range routes {
		if _, _, err := splitHostPort(r); err != nil {
			return nil, err
		}
		us = append(us, &url.URL{Scheme: "nats-route", Host: r})
	}
	return us, nil
}

// routeTLS merges the accepting and dialing configurations into the one
// NATS uses for both ends of a route.
func routeTLS(srv, cli *tls.Config) *tls.Config {
	c := srv.Clone()
	if cli != nil {
		c.RootCAs = cli.RootCAs
		c.ServerName = cli.ServerName
		if len(c.Certificates) == 0 {
			c.Certificates = cli.Certificates
		}
	}
	return c
}

// SetRoutes changes the routes to the other servers when the server group
// changes (JetStream keeps departed servers as peers until they are
// removed from its meta group, which this does not do). It does nothing
// with an external NATS cluster. A queue opened without routes runs a
// standalone JetStream: making it part of a cluster takes a restart.
func (q *Queue) SetRoutes(routes []string) error {
	if q.ns == nil {
		return nil
	}
	us, err := routeURLs(routes)
	if err != nil {
		return err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.opts.Cluster.Port == 0 {
		return errors.New("fnqueue: the queue was opened without routes (standalone JetStream); joining a cluster takes a restart")
	}
	o := q.opts.Clone()
	o.Routes = us
	if err := q.ns.ReloadOptions(o); err != nil {
		return fmt.Errorf("fnqueue: changing routes: %w", err)
	}
	q.opts = o
	return nil
}

// natsLogger sends the embedded server's log to slog: notices at debug
// level (NATS is chatty when it starts), warnings and errors as such. It
// keeps the first fatal error (the embedded server does not exit) for Open
// to report.
type natsLogger struct {
	log   *slog.Logger
	fatal atomic.Pointer[string]
}

func (l *natsLogger) Noticef(f string, v ...any) { l.log.Debug(fmt.Sprintf(f, v...)) }
func (l *natsLogger) Warnf(f string, v ...any)   { l.log.Warn(fmt.Sprintf(f, v...)) }
func (l *natsLogger) Errorf(f string, v ...any)  { l.log.Error(fmt.Sprintf(f, v...)) }
func (l *natsLogger) Debugf(f string, v ...any)  { l.log.Debug(fmt.Sprintf(f, v...)) }
func (l *natsLogger) Tracef(string, ...any)      {}

func (l *natsLogger) Fatalf(f string, v ...any) {
	msg := fmt.Sprintf(f, v...)
	l.fatal.CompareAndSwap(nil, &msg)
	l.log.Error(msg)
}
