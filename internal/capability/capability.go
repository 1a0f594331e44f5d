// Package capability issues and checks capabilities: short-lived, signed
// statements by a server that the bearer may perform one operation on one
// chunk (read, write, delete) or read one task's logs. Data nodes check
// them on every chunk and log request, so that knowing a chunk id or a
// task id grants nothing by itself, as HDFS block access tokens do.
//
// A capability is the base64url (unpadded) encoding of a JSON [Grant], a
// dot, and the base64url encoding of its ed25519 signature. Servers share
// one signing key (kept in the Raft state); agents learn its public key
// from the servers and verify with it.
package capability

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"
)

// Op is what a capability allows.
type Op string

// The operations a capability can grant.
const (
	OpRead   Op = "read"   // GET a chunk (and verify it), or pull it to replicate
	OpWrite  Op = "write"  // PUT a chunk, or have a node replicate it from a peer
	OpDelete Op = "delete" // DELETE a chunk
	OpLogs   Op = "logs"   // read a task's stdout or stderr
)

// Valid reports whether op is one of the known operations.
func (op Op) Valid() bool {
	switch op {
	case OpRead, OpWrite, OpDelete, OpLogs:
		return true
	}
	return false
}

// Grant is what a capability states. Chunk is set for the chunk
// operations and Task (job/group/index) for [OpLogs]; Cluster names the
// cluster of the caller it was issued to ("" for an operator), for the
// data nodes' logs.
type Grant struct {
	Op      Op        `json:"op"`
	Chunk   string    `json:"chunk,omitempty"`
	Task    string    `json:"task,omitempty"`
	Cluster string    `json:"cluster,omitempty"`
	Expires time.Time `json:"exp"`
}

// target returns the chunk or the task the grant is about.
func (g Grant) target() string {
	if g.Op == OpLogs {
		return g.Task
	}
	return g.Chunk
}

// Errors of [Verifier.Verify]. Every refusal wraps [ErrRefused] and one
// of the others, which says what is wrong; [Reason] names it in one word.
var (
	ErrRefused      = errors.New("capability: refused")
	ErrMissing      = errors.New("capability: none presented")
	ErrMalformed    = errors.New("capability: malformed")
	ErrBadSignature = errors.New("capability: not signed by a key of this installation")
	ErrExpired      = errors.New("capability: expired")
	ErrWrongOp      = errors.New("capability: granted for another operation")
	ErrWrongTarget  = errors.New("capability: granted for another chunk or task")
	ErrNoKey        = errors.New("capability: this node has no key to check capabilities with yet")
)

// Reason returns a short, stable name for why err refused a capability
// ("missing", "malformed", "bad_signature", "expired", "wrong_op",
// "wrong_target", "no_key"), for metrics labels; "other" for anything else.
func Reason(err error) string {
	for _, r := range []struct {
		err  error
		name string
	}{
		{ErrMissing, "missing"}, {ErrMalformed, "malformed"}, {ErrBadSignature, "bad_signature"},
		{ErrExpired, "expired"}, {ErrWrongOp, "wrong_op"}, {ErrWrongTarget, "wrong_target"}, {ErrNoKey, "no_key"},
	} {
		if errors.Is(err, r.err) {
			return r.name
		}
	}
	return "other"
}

// refusal is a refused capability: it wraps ErrRefused and its reason.
type refusal struct {
	reason error
	detail string
}

func (r *refusal) Error() string   { return r.reason.Error() + ": " + r.detail }
func (r *refusal) Unwrap() []error { return []error{ErrRefused, r.reason} }

// refuse returns a refusal for reason with details.
func refuse(reason error, format string, args ...any) error {
	return &refusal{reason: reason, detail: fmt.Sprintf(format, args...)}
}

// maxTokenLen bounds what Verify parses: a grant names one chunk or task
// id, so a capability is a few hundred bytes.
const maxTokenLen = 2048

var b64 = base64.RawURLEncoding

// Issuer signs capabilities. It is safe for concurrent use.
type Issuer struct {
	key ed25519.PrivateKey
	now func() time.Time
}

// NewIssuer returns an issuer signing with key; now is its clock.
func NewIssuer(key ed25519.PrivateKey, now func() time.Time) *Issuer {
	return &Issuer{key: key, now: now}
}

// PublicKey returns the key that verifies the issuer's capabilities.
func (is *Issuer) PublicKey() ed25519.PublicKey { return is.key.Public().(ed25519.PublicKey) }

// Issue returns a capability for op on target (a chunk id, or a task id
// for [OpLogs]) that expires ttl from now.
func (is *Issuer) Issue(op Op, target, cluster string, ttl time.Duration) string {
	g := Grant{Op: op, Cluster: cluster, Expires: is.now().Add(ttl).UTC().Truncate(time.Second)}
	if op == OpLogs {
		g.Task = target
	} else {
		g.Chunk = target
	}
	return Sign(is.key, g)
}

// Sign encodes and signs g with key. Servers use [Issuer]; tests use Sign
// to make capabilities a server would not.
func Sign(key ed25519.PrivateKey, g Grant) string {
	payload, _ := json.Marshal(g) // a Grant always encodes
	return b64.EncodeToString(payload) + "." + b64.EncodeToString(ed25519.Sign(key, payload))
}

// Verifier checks capabilities against the public keys it holds. Its keys
// can be replaced while it is in use ([Verifier.SetKeys]); it is safe for
// concurrent use.
type Verifier struct {
	keys atomic.Pointer[[]ed25519.PublicKey]
	now  func() time.Time
}

// NewVerifier returns a verifier with the given keys (maybe none yet) and
// clock.
func NewVerifier(now func() time.Time, keys ...ed25519.PublicKey) *Verifier {
	v := &Verifier{now: now}
	v.SetKeys(keys)
	return v
}

// SetKeys replaces the keys capabilities are checked with.
func (v *Verifier) SetKeys(keys []ed25519.PublicKey) {
	k := append([]ed25519.PublicKey(nil), keys...)
	v.keys.Store(&k)
}

// Keys returns the keys capabilities are checked with.
func (v *Verifier) Keys() []ed25519.PublicKey { return *v.keys.Load() }

// Verify checks that token is a capability signed by one of the keys, not
// expired, for op on target (a chunk id, or a task id for [OpLogs]), and
// returns its grant. Errors wrap [ErrRefused] and say what is wrong.
func (v *Verifier) Verify(token string, op Op, target string) (Grant, error) {
	if token == "" {
		return Grant{}, refuse(ErrMissing, "%s of %s needs a capability issued by a server", op, target)
	}
	keys := v.Keys()
	if len(keys) == 0 {
		return Grant{}, refuse(ErrNoKey, "try again once the node has heard from the servers")
	}
	payloadB64, sigB64, ok := strings.Cut(token, ".")
	if len(token) > maxTokenLen || !ok {
		return Grant{}, refuse(ErrMalformed, "want PAYLOAD.SIGNATURE of at most %d bytes", maxTokenLen)
	}
	payload, perr := b64.DecodeString(payloadB64)
	sig, serr := b64.DecodeString(sigB64)
	if perr != nil || serr != nil || len(sig) != ed25519.SignatureSize {
		return Grant{}, refuse(ErrMalformed, "payload or signature is not base64url, or the signature has the wrong size")
	}
	signed := false
	for _, k := range keys {
		if len(k) == ed25519.PublicKeySize && ed25519.Verify(k, payload, sig) {
			signed = true
			break
		}
	}
	if !signed {
		return Grant{}, refuse(ErrBadSignature, "forged, or signed by another installation")
	}
	var g Grant
	if err := json.Unmarshal(payload, &g); err != nil || !g.Op.Valid() || g.Expires.IsZero() {
		return Grant{}, refuse(ErrMalformed, "signed payload is not a grant")
	}
	if now := v.now(); !now.Before(g.Expires) {
		return Grant{}, refuse(ErrExpired, "expired at %s, %s ago", g.Expires.Format(time.RFC3339), now.Sub(g.Expires).Round(time.Second))
	}
	if g.Op != op {
		return Grant{}, refuse(ErrWrongOp, "granted for %s, used for %s", g.Op, op)
	}
	if g.target() != target {
		return Grant{}, refuse(ErrWrongTarget, "granted for %q, used for %q", g.target(), target)
	}
	return g, nil
}

// KeyFromSeed returns the signing key of a 32-byte seed, as the servers
// keep it.
func KeyFromSeed(seed []byte) (ed25519.PrivateKey, error) {
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("capability: a key seed has %d bytes, got %d", ed25519.SeedSize, len(seed))
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// EncodeKey and DecodeKey turn a public key into text and back, for the
// API that hands it to agents.
func EncodeKey(k ed25519.PublicKey) string { return b64.EncodeToString(k) }

// DecodeKey is the inverse of [EncodeKey].
func DecodeKey(s string) (ed25519.PublicKey, error) {
	b, err := b64.DecodeString(s)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("capability: %q is not a base64url ed25519 public key", s)
	}
	return ed25519.PublicKey(b), nil
}
