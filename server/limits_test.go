package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hsmca/hsmca/ca"
)

// TestNewRefusesNegativeLimits: a negative timeout or size is an error
// naming the field, not a timeout switched off (a negative
// ReadHeaderTimeout would keep slow clients' connections open).
func TestNewRefusesNegativeLimits(t *testing.T) {
	e := newEnv(t, nil)
	for _, tc := range []struct {
		field string
		mod   func(*Config)
	}{
		{"ReadHeaderTimeout", func(c *Config) { c.ReadHeaderTimeout = -time.Second }},
		{"ReadTimeout", func(c *Config) { c.ReadTimeout = -time.Second }},
		{"WriteTimeout", func(c *Config) { c.WriteTimeout = -1 }},
		{"IdleTimeout", func(c *Config) { c.IdleTimeout = -time.Minute }},
		{"RetryAfter", func(c *Config) { c.RetryAfter = -time.Second }},
		{"MaxHeaderBytes", func(c *Config) { c.MaxHeaderBytes = -1 }},
		{"MaxBodyBytes", func(c *Config) { c.MaxBodyBytes = -1 }},
	} {
		t.Run(tc.field, func(t *testing.T) {
			cfg := Config{HTTPAddr: "127.0.0.1:0"}
			tc.mod(&cfg)
			_, err := New(cfg, Deps{CA: e.srv.CA(), Quorum: e.q, Store: e.ping})
			if err == nil || !strings.Contains(err.Error(), tc.field) || !strings.Contains(err.Error(), "negative") {
				t.Fatalf("New: %v, want an error naming %s as negative", err, tc.field)
			}
		})
	}
	// A negative CRLInterval is documented: no schedule.
	if _, err := New(Config{HTTPAddr: "127.0.0.1:0", CRLInterval: -1}, Deps{CA: e.srv.CA(), Quorum: e.q, Store: e.ping}); err != nil {
		t.Fatalf("CRLInterval -1: %v", err)
	}
}

// TestListenSocketNearPathLimit: a socket path the kernel accepts is
// accepted, even when its temporary name (made so that the socket is
// never reachable with looser permissions) is close to the limit.
func TestListenSocketNearPathLimit(t *testing.T) {
	base := t.TempDir()
	// A path of exactly maxSocketPath bytes, whose temporary name must
	// not be longer (DIR/.sock-NNNNNNNNNN/s was, by 8 bytes).
	dir := filepath.Join(base, strings.Repeat("d", maxSocketPath-len(base)-len("/admin.sock")-1))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "admin.sock")
	if len(path) != maxSocketPath {
		t.Fatalf("test path is %d bytes", len(path))
	}
	ln, err := listenSocket(path)
	if err != nil {
		t.Fatalf("listenSocket(%d-byte path, limit %d): %v", len(path), maxSocketPath, err)
	}
	defer ln.Close()
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v, mode %v", err, fi.Mode())
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("left in the directory: %v", ents)
	}
}

// TestListenSocketPathTooLong: a path longer than a unix socket allows is
// refused up front with an error that says so (the socket used to be
// made under a short temporary name and renamed there, where no client
// can reach it).
func TestListenSocketPathTooLong(t *testing.T) {
	path := filepath.Join(t.TempDir(), strings.Repeat("s", maxSocketPath)+".sock")
	_, err := listenSocket(path)
	if err == nil || !strings.Contains(err.Error(), "too long") || strings.Contains(err.Error(), "invalid argument") {
		t.Fatalf("listenSocket(%d-byte path): %v, want a clear too-long error", len(path), err)
	}
}

// servedCN returns the common name of the certificate the HTTPS listener
// presents.
func servedCN(t *testing.T, e *testEnv) string {
	t.Helper()
	c, err := tls.Dial("tcp", e.srv.HTTPSAddr(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].Subject.CommonName
}

// TestReloadTLSFiles: a reload that names other TLS files serves them; one
// whose new pair does not load fails, keeps the running certificate, CA
// and files, and does not commit.
func TestReloadTLSFiles(t *testing.T) {
	e := newEnv(t, nil)
	if cn := servedCN(t, e); cn != "localhost" {
		t.Fatalf("served %q before the reload", cn)
	}
	// A renewed certificate in new files.
	e.q.active = true
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cert := e.issueDirect(e.srv.CA(), "server", key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "renewed"},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}})
	e.q.active = false
	certFile, keyFile := filepath.Join(e.dir, "new.pem"), filepath.Join(e.dir, "new.key")
	writePEM(t, certFile, "CERTIFICATE", cert.DER, cert.Chain[0])
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	writePEM(t, keyFile, "PRIVATE KEY", kder)

	committed := 0
	reloadWith := func(next *ca.CA, cf, kf string) error {
		e.srv.d.Reload = func() (Reloaded, error) {
			return Reloaded{CA: next, TLSCertFile: cf, TLSKeyFile: kf, Commit: func() error { committed++; return nil }}, nil
		}
		return e.srv.Reload()
	}
	cur := e.srv.CA()
	if err := reloadWith(cur, certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	if cn := servedCN(t, e); cn != "renewed" || committed != 1 {
		t.Fatalf("after the reload: served %q, %d commits; want the new files' certificate", cn, committed)
	}

	// A new pair that does not match fails the reload.
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	oder, _ := x509.MarshalPKCS8PrivateKey(other)
	badKey := filepath.Join(e.dir, "bad.key")
	writePEM(t, badKey, "PRIVATE KEY", oder)
	next, err := ca.New(cur.Config(), []ca.Issuer{{Name: "issuing-1", Cert: e.inter, Chain: []*x509.Certificate{e.root},
		Signer: gateSigner{Signer: e.interKey, q: e.q}}}, e.st, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for name, files := range map[string][2]string{
		"mismatched key": {certFile, badKey},
		"missing file":   {filepath.Join(e.dir, "nope.pem"), keyFile},
		"key only":       {"", keyFile},
	} {
		if err := reloadWith(next, files[0], files[1]); err == nil {
			t.Fatalf("%s: reload succeeded", name)
		}
		if cn := servedCN(t, e); cn != "renewed" || e.srv.CA() != cur || committed != 1 {
			t.Fatalf("%s: a failed reload changed things: served %q, CA swapped %v, %d commits", name, cn, e.srv.CA() != cur, committed)
		}
	}
	// A reload that names no files re-reads the ones in force.
	if err := reloadWith(next, "", ""); err != nil {
		t.Fatal(err)
	}
	if cn := servedCN(t, e); cn != "renewed" || e.srv.CA() != next {
		t.Fatalf("after a reload without TLS files: served %q", cn)
	}
	// A failed Commit fails the reload.
	e.srv.d.Reload = func() (Reloaded, error) {
		return Reloaded{CA: cur, Commit: func() error { return errors.New("metrics: conflict") }}, nil
	}
	if err := e.srv.Reload(); err == nil || e.srv.CA() != next {
		t.Fatalf("reload with a failing commit: %v", err)
	}
}
