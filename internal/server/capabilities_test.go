package server_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/shoal-dev/shoal/api"
	"github.com/shoal-dev/shoal/internal/capability"
	"github.com/shoal-dev/shoal/internal/testutil"
)

// TestCapabilities checks that the servers share one capability key, made
// through Raft and handed to agents as a public key with their work, and
// that they grant a cluster's token write and read capabilities for the
// chunks of its files, through a follower too.
func TestCapabilities(t *testing.T) {
	f := newAuthFixture(t)
	var seed []byte
	testutil.WaitFor(t, 10*time.Second, func() (bool, string) {
		for i := range 3 {
			keys := f.g.Server(i).Store().Snapshot().CapabilityKeys(nil)
			if len(keys) != 1 {
				return false, "a server has no capability key yet"
			}
			if seed == nil {
				seed = keys[0].Seed
			}
			if !bytes.Equal(keys[0].Seed, seed) {
				t.Fatalf("servers hold different capability keys")
			}
		}
		return true, ""
	})
	follower := f.g.NewClient([]string{f.g.HTTPAddr(f.follower)}, operatorToken)
	work, _, err := follower.NodeWork(reqCtx(t), "n1", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(work.CapabilityKeys) != 1 {
		t.Fatalf("node work has capability keys %v, want one", work.CapabilityKeys)
	}
	pub, err := capability.DecodeKey(work.CapabilityKeys[0])
	if err != nil {
		t.Fatal(err)
	}
	v := capability.NewVerifier(time.Now, pub)

	c1 := f.g.NewClient([]string{f.g.HTTPAddr(f.follower)}, f.c1.Token)
	const path = "/clusters/c1/data/f"
	fi, err := c1.FSCreate(reqCtx(t), &api.FileCreate{Path: path, Replication: 1})
	if err != nil {
		t.Fatal(err)
	}
	alloc, err := c1.FSAllocate(reqCtx(t), &api.ChunkAllocate{Path: path, FileID: fi.FileID})
	if err != nil {
		t.Fatal(err)
	}
	g, err := v.Verify(alloc.Capability, capability.OpWrite, alloc.ID)
	if err != nil || g.Cluster != "c1" {
		t.Errorf("allocation's write capability: %+v, %v; want one for cluster c1", g, err)
	}
	if g.Expires.After(time.Now().Add(11*time.Minute)) || g.Expires.Before(time.Now().Add(9*time.Minute)) {
		t.Errorf("write capability expires at %s, want about 10 minutes from now", g.Expires)
	}
	if _, err := v.Verify(alloc.ReadCapability, capability.OpRead, alloc.ID); err != nil {
		t.Errorf("allocation's read capability: %v", err)
	}
	if err := c1.FSCommit(reqCtx(t), &api.ChunkCommit{Path: path, FileID: fi.FileID, ID: alloc.ID, Length: 1, CRC: 7,
		Replicas: []string{alloc.Replicas[0].Node}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c1.FSClose(reqCtx(t), &api.FileClose{Path: path, FileID: fi.FileID, Size: 1}); err != nil {
		t.Fatal(err)
	}
	// The follower may not have applied the close yet.
	var st *api.FileInfo
	testutil.WaitFor(t, 10*time.Second, func() (bool, string) {
		st, err = c1.FSStat(reqCtx(t), path)
		return err == nil && len(st.Chunks) == 1, fmt.Sprintf("FSStat = %+v, %v", st, err)
	})
	if _, err := v.Verify(st.Chunks[0].Capability, capability.OpRead, alloc.ID); err != nil {
		t.Errorf("stat's read capability: %v", err)
	}
	if _, err := v.Verify(st.Chunks[0].Capability, capability.OpDelete, alloc.ID); err == nil {
		t.Errorf("stat's read capability allows a delete")
	}

	// Refused tokens are counted.
	if status, _ := call(t, f.g.HTTPClient(), f.g.HTTPAddr(f.leader), "GET", "/v1/nodes", "Bearer guess", ""); status != 401 {
		t.Fatalf("a wrong token: %d, want 401", status)
	}
	_, metrics := call(t, f.g.HTTPClient(), f.g.HTTPAddr(f.leader), "GET", "/metrics", "Bearer "+operatorToken, "")
	if !strings.Contains(metrics, `shoal_server_refused_total{reason="unknown",what="token"} 1`) {
		t.Errorf("metrics lack the refused token:\n%s", grepLines(metrics, "refused"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
