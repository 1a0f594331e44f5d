package capability

import (
	"crypto/ed25519"
	"errors"
	"strings"
	"testing"
	"time"
)

func testKey(t *testing.T, b byte) ed25519.PrivateKey {
	t.Helper()
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = b
	}
	k, err := KeyFromSeed(seed)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestIssueVerify(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	clock := func() time.Time { return now }
	key, other := testKey(t, 1), testKey(t, 2)
	is := NewIssuer(key, clock)
	v := NewVerifier(clock, other.Public().(ed25519.PublicKey), is.PublicKey())

	read := is.Issue(OpRead, "7-abc", "blue", 10*time.Minute)
	g, err := v.Verify(read, OpRead, "7-abc")
	if err != nil {
		t.Fatalf("Verify of a good capability: %v", err)
	}
	if g.Op != OpRead || g.Chunk != "7-abc" || g.Cluster != "blue" || !g.Expires.Equal(now.Add(10*time.Minute)) {
		t.Errorf("grant = %+v", g)
	}
	logs := is.Issue(OpLogs, "job/g/0", "", time.Minute)
	if _, err := v.Verify(logs, OpLogs, "job/g/0"); err != nil {
		t.Errorf("Verify of a logs capability: %v", err)
	}

	forged := Sign(testKey(t, 3), Grant{Op: OpRead, Chunk: "7-abc", Expires: now.Add(time.Hour)})
	expired := Sign(key, Grant{Op: OpRead, Chunk: "7-abc", Expires: now})
	payload, sig, _ := strings.Cut(read, ".")
	tampered := Sign(key, Grant{Op: OpWrite, Chunk: "7-abc", Expires: now.Add(time.Hour)})
	tamperedPayload, _, _ := strings.Cut(tampered, ".")
	for _, tt := range []struct {
		name, token string
		op          Op
		target      string
		want        error
		reason      string
	}{
		{"none", "", OpRead, "7-abc", ErrMissing, "missing"},
		{"no dot", "abc", OpRead, "7-abc", ErrMalformed, "malformed"},
		{"not base64", "a!b.c!d", OpRead, "7-abc", ErrMalformed, "malformed"},
		{"short signature", payload + ".AAAA", OpRead, "7-abc", ErrMalformed, "malformed"},
		{"too long", strings.Repeat("A", 5000) + "." + sig, OpRead, "7-abc", ErrMalformed, "malformed"},
		{"another key", forged, OpRead, "7-abc", ErrBadSignature, "bad_signature"},
		{"payload swapped", tamperedPayload + "." + sig, OpWrite, "7-abc", ErrBadSignature, "bad_signature"},
		{"signed garbage", b64.EncodeToString([]byte("{}")) + "." + b64.EncodeToString(ed25519.Sign(key, []byte("{}"))), OpRead, "7-abc", ErrMalformed, "malformed"},
		{"signed non-JSON", b64.EncodeToString([]byte("x")) + "." + b64.EncodeToString(ed25519.Sign(key, []byte("x"))), OpRead, "7-abc", ErrMalformed, "malformed"},
		{"expired", expired, OpRead, "7-abc", ErrExpired, "expired"},
		{"wrong op", read, OpWrite, "7-abc", ErrWrongOp, "wrong_op"},
		{"wrong chunk", read, OpRead, "8-abc", ErrWrongTarget, "wrong_target"},
		{"chunk id as task", read, OpLogs, "7-abc", ErrWrongOp, "wrong_op"},
		{"wrong task", logs, OpLogs, "job/g/1", ErrWrongTarget, "wrong_target"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := v.Verify(tt.token, tt.op, tt.target)
			if !errors.Is(err, tt.want) || !errors.Is(err, ErrRefused) {
				t.Fatalf("Verify = %v, want %v wrapped in ErrRefused", err, tt.want)
			}
			if got := Reason(err); got != tt.reason {
				t.Errorf("Reason = %q, want %q", got, tt.reason)
			}
		})
	}
}

func TestVerifierWithoutKeys(t *testing.T) {
	now := time.Now()
	is := NewIssuer(testKey(t, 1), func() time.Time { return now })
	v := NewVerifier(func() time.Time { return now })
	tok := is.Issue(OpDelete, "c", "", time.Minute)
	if _, err := v.Verify(tok, OpDelete, "c"); !errors.Is(err, ErrNoKey) {
		t.Fatalf("Verify without keys = %v, want ErrNoKey", err)
	}
	v.SetKeys([]ed25519.PublicKey{is.PublicKey()})
	if _, err := v.Verify(tok, OpDelete, "c"); err != nil {
		t.Fatalf("Verify after SetKeys: %v", err)
	}
}

func TestKeyEncoding(t *testing.T) {
	pub := testKey(t, 9).Public().(ed25519.PublicKey)
	got, err := DecodeKey(EncodeKey(pub))
	if err != nil || !got.Equal(pub) {
		t.Fatalf("DecodeKey(EncodeKey(k)) = %v, %v", got, err)
	}
	for _, bad := range []string{"", "!!", EncodeKey(pub[:10])} {
		if _, err := DecodeKey(bad); err == nil {
			t.Errorf("DecodeKey(%q) succeeded", bad)
		}
	}
	if _, err := KeyFromSeed([]byte("short")); err == nil {
		t.Error("KeyFromSeed of 5 bytes succeeded")
	}
}

// FuzzVerify checks that no input makes Verify panic or accept something
// the key did not sign.
func FuzzVerify(f *testing.F) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	seed := make([]byte, ed25519.SeedSize)
	key := ed25519.NewKeyFromSeed(seed)
	is := NewIssuer(key, func() time.Time { return now })
	good := is.Issue(OpRead, "c", "", time.Minute)
	f.Add(good)
	f.Add("")
	f.Add(".")
	f.Add(good + "x")
	f.Add(strings.Replace(good, ".", "..", 1))
	v := NewVerifier(func() time.Time { return now }, is.PublicKey())
	f.Fuzz(func(t *testing.T, tok string) {
		_, err := v.Verify(tok, OpRead, "c")
		if err == nil && tok != good {
			// Another encoding of the same signed payload is fine only
			// if it decodes to the same bytes; anything else is a bug.
			p, s, _ := strings.Cut(tok, ".")
			gp, gs, _ := strings.Cut(good, ".")
			pb, _ := b64.DecodeString(p)
			sb, _ := b64.DecodeString(s)
			gpb, _ := b64.DecodeString(gp)
			gsb, _ := b64.DecodeString(gs)
			if string(pb) != string(gpb) || string(sb) != string(gsb) {
				t.Fatalf("Verify accepted %q", tok)
			}
		}
	})
}
