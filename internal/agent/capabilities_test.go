package agent

import (
	"crypto/ed25519"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/capability"
)

func TestAuthorize(t *testing.T) {
	now := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	a := &Agent{log: slog.New(slog.DiscardHandler), caps: capability.NewVerifier(clock), metrics: newAgentMetrics()}
	seed := make([]byte, ed25519.SeedSize)
	is := capability.NewIssuer(ed25519.NewKeyFromSeed(seed), clock)
	req := func(token string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/v1/agent/logs?task=j/g/0", nil)
		if token != "" {
			r.Header.Set(api.CapabilityHeader, token)
		}
		return r
	}
	good := is.Issue(capability.OpLogs, "j/g/0", "c1", time.Minute)

	// Before the servers sent a key, everything is refused.
	if err := a.authorize(req(good), capability.OpLogs, "j/g/0"); !errors.Is(err, capability.ErrNoKey) {
		t.Fatalf("authorize without keys = %v, want ErrNoKey", err)
	}
	a.setCapabilityKeys([]string{"not a key", capability.EncodeKey(is.PublicKey())})
	if err := a.authorize(req(good), capability.OpLogs, "j/g/0"); err != nil {
		t.Fatalf("authorize of a good capability: %v", err)
	}
	// An answer without keys keeps the ones held.
	a.setCapabilityKeys(nil)
	if err := a.authorize(req(good), capability.OpLogs, "j/g/0"); err != nil {
		t.Fatalf("authorize after an empty key list: %v", err)
	}
	err := a.authorize(req(""), capability.OpLogs, "j/g/0")
	if status, _ := capabilityStatus(err); status != http.StatusUnauthorized {
		t.Errorf("no capability: status %d, want 401", status)
	}
	err = a.authorize(req(good), capability.OpLogs, "j/g/1")
	if status, _ := capabilityStatus(err); status != http.StatusForbidden {
		t.Errorf("another task's capability: status %d, want 403", status)
	}

	rec := httptest.NewRecorder()
	a.metrics.handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for _, want := range []string{
		`shoal_agent_refused_total{op="logs",reason="no_key",what="capability"} 1`,
		`shoal_agent_refused_total{op="logs",reason="missing",what="capability"} 1`,
		`shoal_agent_refused_total{op="logs",reason="wrong_target",what="capability"} 1`,
	} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("metrics lack %s:\n%s", want, rec.Body.String())
		}
	}
}
