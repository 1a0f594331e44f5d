package tlsfiles

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Set is the files of a whole installation on one machine, as `shoal dev`
// and the tests make them in one directory: ca.pem (with ca-key.pem) and
// ROLE.pem with ROLE-key.pem for each role, servers and agents valid for
// localhost and 127.0.0.1.
type Set struct {
	Dir string
}

// CACert returns the path of the CA certificate.
func (s Set) CACert() string { return filepath.Join(s.Dir, "ca.pem") }

// Files returns the files of a process of role r.
func (s Set) Files(r Role) Files {
	return Files{CACert: s.CACert(), Cert: filepath.Join(s.Dir, string(r)+".pem"),
		Key: filepath.Join(s.Dir, string(r)+"-key.pem")}
}

// MakeSet makes the files of a [Set] in dir, reusing those that exist: the
// CA when both its files exist, and each role's pair when both exist and
// the CA was reused. Keys are written 0600, dir 0700.
func MakeSet(dir string) (Set, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return Set{}, fmt.Errorf("tlsfiles: %w", err)
	}
	s := Set{Dir: abs}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return Set{}, fmt.Errorf("tlsfiles: %w", err)
	}
	now := time.Now()
	caKeyPath := filepath.Join(abs, "ca-key.pem")
	fresh := !exist(s.CACert(), caKeyPath)
	if fresh {
		cert, key, err := NewCA("Shoal dev CA", rand.Reader, now, DefaultCAValidity)
		if err != nil {
			return Set{}, err
		}
		if err := writePair(s.CACert(), caKeyPath, cert, key); err != nil {
			return Set{}, err
		}
	}
	caPEM, err := os.ReadFile(s.CACert())
	if err != nil {
		return Set{}, fmt.Errorf("tlsfiles: %w", err)
	}
	caKey, err := os.ReadFile(caKeyPath)
	if err != nil {
		return Set{}, fmt.Errorf("tlsfiles: %w", err)
	}
	for _, r := range []Role{RoleServer, RoleAgent, RoleClient} {
		f := s.Files(r)
		if !fresh && exist(f.Cert, f.Key) {
			continue
		}
		var hosts []string
		var ips []net.IP
		if r != RoleClient {
			hosts, ips = []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)}
		}
		cert, key, err := NewCert(caPEM, caKey, r, string(r), hosts, ips, rand.Reader, now, DefaultCertValidity)
		if err != nil {
			return Set{}, err
		}
		if err := writePair(f.Cert, f.Key, cert, key); err != nil {
			return Set{}, err
		}
	}
	return s, nil
}

func exist(paths ...string) bool {
	for _, p := range paths {
		if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
			return false
		}
	}
	return true
}

// writePair writes a key (0600) and then its certificate, replacing
// whatever was there.
func writePair(certPath, keyPath string, cert, key []byte) error {
	os.Remove(keyPath) // WriteFile keeps the mode of an existing file
	if err := os.WriteFile(keyPath, key, 0o600); err != nil {
		return fmt.Errorf("tlsfiles: %w", err)
	}
	if err := os.WriteFile(certPath, cert, 0o644); err != nil {
		return fmt.Errorf("tlsfiles: %w", err)
	}
	return nil
}
