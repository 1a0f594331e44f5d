package agent

import (
	"context"
	"crypto/ed25519"
	"errors"
	"net/http"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/capability"
)

// The agent's data port checks the caller: a chunk read, write or delete,
// a replication and a task-log read are served only with a capability a
// server signed for that operation on that chunk or task (package
// capability). The servers' public keys come with the node's work; the
// agent checks with the latest it received. Short-circuit reads over the
// local socket are not concerned: that socket checks its peers' user.

// agentMetrics are the agent's Prometheus metrics, in a registry of its
// own (no global state: several agents can share a test process).
type agentMetrics struct {
	reg     *prometheus.Registry
	refused *prometheus.CounterVec
	fnMetrics
}

func newAgentMetrics() *agentMetrics {
	m := &agentMetrics{
		reg: prometheus.NewRegistry(),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_agent_refused_total",
			Help: "Chunk and log requests this agent refused for their capability, by operation and reason."},
			[]string{"what", "op", "reason"}),
	}
	m.reg.MustRegister(m.refused)
	m.fnMetrics = newFnMetrics(m.reg)
	return m
}

func (m *agentMetrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// setCapabilityKeys makes keys (from the node's work) the ones
// capabilities are checked with; keys it cannot decode are skipped and
// an empty list keeps the keys held, so that a server that answers
// without keys does not lock the node.
func (a *Agent) setCapabilityKeys(encoded []string) {
	var keys []ed25519.PublicKey
	for _, s := range encoded {
		k, err := capability.DecodeKey(s)
		if err != nil {
			a.log.Warn("skipping a capability key from the servers", "err", err)
			continue
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return
	}
	if !slices.EqualFunc(keys, a.caps.Keys(), func(x, y ed25519.PublicKey) bool { return x.Equal(y) }) {
		a.caps.SetKeys(keys)
		a.log.Info("capability keys updated", "keys", len(keys))
	}
}

// fetchCapabilityKeys reads the servers' capability keys once, before the
// node reports ready, so that its data port does not refuse the first
// chunks sent to it; the watch loop keeps them current after.
func (a *Agent) fetchCapabilityKeys() {
	ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
	defer cancel()
	work, _, err := a.client.NodeWork(ctx, a.cfg.Name, 0, nil)
	if err != nil {
		a.log.Warn("reading the capability keys failed; the data port refuses chunk requests until the work watch brings them", "err", err)
		return
	}
	a.setCapabilityKeys(work.CapabilityKeys)
}

// authorize checks that r carries a capability for op on target (a chunk
// id, or a task id for logs); a refusal is logged and counted.
func (a *Agent) authorize(r *http.Request, op capability.Op, target string) error {
	_, err := a.caps.Verify(r.Header.Get(api.CapabilityHeader), op, target)
	if err != nil {
		a.metrics.refused.WithLabelValues("capability", string(op), capability.Reason(err)).Inc()
		a.log.Warn("refused a request without a valid capability", "op", op, "target", target,
			"remote", r.RemoteAddr, "err", err)
	}
	return err
}

// capabilityStatus is the HTTP status of a refused capability: 401 when
// there was none, 403 otherwise.
func capabilityStatus(err error) (int, string) {
	if errors.Is(err, capability.ErrMissing) {
		return http.StatusUnauthorized, api.CodeUnauthorized
	}
	return http.StatusForbidden, api.CodeForbidden
}
