package chunkstore

import (
	"context"
	"crypto/ed25519"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/capability"
)

// capNode is a node whose handler checks capabilities signed by key, with
// the refusals it saw.
func capNode(t *testing.T, key ed25519.PrivateKey, now func() time.Time) (*node, *[]error) {
	t.Helper()
	v := capability.NewVerifier(now, key.Public().(ed25519.PublicKey))
	var refused []error
	n := newNode(t, HandlerOptions{Authorize: func(r *http.Request, op capability.Op, chunk string) error {
		_, err := v.Verify(r.Header.Get(api.CapabilityHeader), op, chunk)
		if err != nil {
			refused = append(refused, err)
		}
		return err
	}})
	return n, &refused
}

func seedKey(b byte) ed25519.PrivateKey {
	seed := make([]byte, ed25519.SeedSize)
	seed[0] = b
	return ed25519.NewKeyFromSeed(seed)
}

func TestCapabilityRefusals(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	key := seedKey(1)
	is := capability.NewIssuer(key, clock)
	const id, other = "41-chunk", "42-other"
	grant := func(op capability.Op, chunk, cluster string) string {
		return is.Issue(op, chunk, cluster, 10*time.Minute)
	}
	// bad returns the capabilities that must not allow op on id.
	bad := func(op capability.Op) []struct{ name, token, reason string } {
		wrongOp := capability.OpRead
		if op == capability.OpRead {
			wrongOp = capability.OpWrite
		}
		return []struct{ name, token, reason string }{
			{"none", "", "missing"},
			{"made up", "bm90LWEtZ3JhbnQ.c2lnbmF0dXJl", "malformed"},
			{"forged", capability.Sign(seedKey(2), capability.Grant{Op: op, Chunk: id, Expires: now.Add(time.Hour)}), "bad_signature"},
			{"expired", capability.Sign(key, capability.Grant{Op: op, Chunk: id, Expires: now.Add(-time.Second)}), "expired"},
			{"wrong op", grant(wrongOp, id, ""), "wrong_op"},
			{"wrong chunk", grant(op, other, ""), "wrong_target"},
			{"other cluster's chunk", grant(op, other, "red"), "wrong_target"},
		}
	}
	ctx := context.Background()
	var c Client
	const data = "the chunk's bytes"

	setup := func(t *testing.T) (*node, *[]error, api.StoredChunk) {
		n, refused := capNode(t, key, clock)
		sc, err := c.Put(ctx, n.addr, id, grant(capability.OpWrite, id, ""), strings.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatalf("Put with a write capability: %v", err)
		}
		return n, refused, sc
	}
	unchanged := func(t *testing.T, n *node, want api.StoredChunk) {
		t.Helper()
		got, err := n.s.Stat(id)
		if err != nil || got != want {
			t.Fatalf("after a refusal the chunk is %+v, %v; want %+v", got, err, want)
		}
		r, err := c.Get(ctx, n.addr, id, grant(capability.OpRead, id, ""), 0)
		if err != nil {
			t.Fatalf("Get with a read capability: %v", err)
		}
		b, err := io.ReadAll(r)
		r.Close()
		if err != nil || string(b) != data {
			t.Fatalf("chunk reads %q, %v; want %q", b, err, data)
		}
	}
	for _, op := range []struct {
		op capability.Op
		do func(n *node, token string) error
	}{
		{capability.OpWrite, func(n *node, token string) error {
			_, err := c.Put(ctx, n.addr, id, token, strings.NewReader("overwritten!"), 12)
			return err
		}},
		{capability.OpRead, func(n *node, token string) error {
			r, err := c.Get(ctx, n.addr, id, token, 0)
			if err == nil {
				r.Close()
			}
			return err
		}},
		{capability.OpDelete, func(n *node, token string) error { return c.Delete(ctx, n.addr, id, token) }},
	} {
		for _, tt := range bad(op.op) {
			t.Run(string(op.op)+"/"+tt.name, func(t *testing.T) {
				n, refused, sc := setup(t)
				err := op.do(n, tt.token)
				if tt.token == "" {
					wantAPIError(t, err, http.StatusUnauthorized, api.CodeUnauthorized)
				} else {
					wantAPIError(t, err, http.StatusForbidden, api.CodeForbidden)
				}
				if len(*refused) != 1 || capability.Reason((*refused)[0]) != tt.reason {
					t.Errorf("refusals = %v, want one for %s", *refused, tt.reason)
				}
				unchanged(t, n, sc)
			})
		}
	}

	t.Run("replicate", func(t *testing.T) {
		src, _, sc := setup(t)
		dst, refused := capNode(t, key, clock)
		req := api.ReplicateRequest{Source: src.addr, Length: sc.Length, CRC: sc.CRC}
		// No write capability for the target: refused before any pull.
		if _, err := c.Replicate(ctx, dst.addr, id, grant(capability.OpRead, id, ""), req); err == nil {
			t.Fatal("Replicate with a read capability succeeded")
		}
		// No read capability for the source: the source refuses the pull.
		_, err := c.Replicate(ctx, dst.addr, id, grant(capability.OpWrite, id, ""), req)
		wantAPIError(t, err, http.StatusBadGateway, api.CodeUnavailable)
		if _, err := dst.s.Stat(id); !errors.Is(err, ErrNotFound) {
			t.Fatalf("after refused replications the target has the chunk: %v", err)
		}
		if len(*refused) != 1 {
			t.Errorf("target refusals = %v, want 1", *refused)
		}
		req.SourceCapability = grant(capability.OpRead, id, "")
		got, err := c.Replicate(ctx, dst.addr, id, grant(capability.OpWrite, id, ""), req)
		if err != nil || got != sc {
			t.Fatalf("Replicate with capabilities = %+v, %v; want %+v", got, err, sc)
		}
	})

	t.Run("verify", func(t *testing.T) {
		n, _, _ := setup(t)
		req, _ := http.NewRequest(http.MethodGet, n.srv.URL+"/v1/chunks/"+id+"/verify", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("verify without a capability: %s, want 401", resp.Status)
		}
	})
}
