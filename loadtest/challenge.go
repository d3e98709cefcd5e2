package loadtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Challenge types (RFC 8555 §8.3, §8.4; RFC 8737).
const (
	HTTP01    = "http-01"
	DNS01     = "dns-01"
	TLSALPN01 = "tls-alpn-01"
)

// idPeACMEIdentifier is the acmeIdentifier extension of RFC 8737 §3.
var idPeACMEIdentifier = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 1, 31}

// solver answers the challenges of every client of a run: one http-01
// server, one tls-alpn-01 server and the stub DNS, shared by all clients.
type solver struct {
	mu     sync.RWMutex
	tokens map[string]string           // http-01: token → key authorization
	alpn   map[string]*tls.Certificate // tls-alpn-01: lower-case name → cert

	dns     *StubDNS
	alpnKey *ecdsa.PrivateKey

	servers []*http.Server
	lns     []net.Listener
}

func newSolver() (*solver, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("loadtest: tls-alpn-01 key: %w", err)
	}
	return &solver{
		tokens:  make(map[string]string),
		alpn:    make(map[string]*tls.Certificate),
		alpnKey: k,
	}, nil
}

// listenHTTP serves http-01 key authorizations on addr.
func (s *solver) listenHTTP(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("loadtest: http-01 listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/acme-challenge/{token}", func(w http.ResponseWriter, r *http.Request) {
		s.mu.RLock()
		ka, ok := s.tokens[r.PathValue("token")]
		s.mu.RUnlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write([]byte(ka))
	})
	s.serve(ln, mux)
	return nil
}

// listenTLSALPN serves tls-alpn-01 certificates (RFC 8737) on addr.
func (s *solver) listenTLSALPN(addr string) error {
	cfg := &tls.Config{
		NextProtos: []string{"acme-tls/1"},
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			s.mu.RLock()
			c := s.alpn[strings.ToLower(hello.ServerName)]
			s.mu.RUnlock()
			if c == nil {
				return nil, fmt.Errorf("loadtest: no tls-alpn-01 certificate for %q", hello.ServerName)
			}
			return c, nil
		},
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("loadtest: tls-alpn-01 listener: %w", err)
	}
	// The validator only needs the handshake; the server never answers
	// a request on acme-tls/1.
	s.serve(tls.NewListener(ln, cfg), http.NotFoundHandler())
	return nil
}

func (s *solver) serve(ln net.Listener, h http.Handler) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	s.servers = append(s.servers, srv)
	s.lns = append(s.lns, ln)
	go func() { _ = srv.Serve(ln) }()
}

func (s *solver) close() error {
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, srv := range s.servers {
		if err := srv.Shutdown(ctx); err != nil {
			errs = append(errs, srv.Close())
		}
	}
	if s.dns != nil {
		errs = append(errs, s.dns.Close())
	}
	return errors.Join(errs...)
}

// present makes the challenge answerable and returns the function that
// removes it again.
func (s *solver) present(typ, domain, token, keyAuth string) (func(), error) {
	switch typ {
	case HTTP01:
		s.mu.Lock()
		s.tokens[token] = keyAuth
		s.mu.Unlock()
		return func() {
			s.mu.Lock()
			delete(s.tokens, token)
			s.mu.Unlock()
		}, nil
	case TLSALPN01:
		c, err := s.alpnCert(domain, keyAuth)
		if err != nil {
			return nil, err
		}
		name := strings.ToLower(domain)
		s.mu.Lock()
		s.alpn[name] = c
		s.mu.Unlock()
		return func() {
			s.mu.Lock()
			if s.alpn[name] == c {
				delete(s.alpn, name)
			}
			s.mu.Unlock()
		}, nil
	case DNS01:
		if s.dns == nil {
			return nil, errors.New("loadtest: dns-01 needs --dns-addr")
		}
		name := "_acme-challenge." + strings.TrimPrefix(domain, "*.")
		v := dns01Value(keyAuth)
		s.dns.SetTXT(name, v)
		return func() { s.dns.ClearTXT(name, v) }, nil
	}
	return nil, fmt.Errorf("loadtest: unsupported challenge type %q", typ)
}

// dns01Value is the TXT record value of RFC 8555 §8.4.
func dns01Value(keyAuth string) string {
	h := sha256.Sum256([]byte(keyAuth))
	return base64.RawURLEncoding.EncodeToString(h[:])
}

// alpnCert builds the self-signed certificate of RFC 8737 §3 for domain.
func (s *solver) alpnCert(domain, keyAuth string) (*tls.Certificate, error) {
	h := sha256.Sum256([]byte(keyAuth))
	ext, err := asn1.Marshal(h[:])
	if err != nil {
		return nil, fmt.Errorf("loadtest: tls-alpn-01 extension: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return nil, fmt.Errorf("loadtest: tls-alpn-01 serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:    serial,
		Subject:         pkix.Name{CommonName: "loadtest tls-alpn-01"},
		NotBefore:       now.Add(-time.Hour),
		NotAfter:        now.Add(24 * time.Hour),
		DNSNames:        []string{domain},
		ExtraExtensions: []pkix.Extension{{Id: idPeACMEIdentifier, Critical: true, Value: ext}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &s.alpnKey.PublicKey, s.alpnKey)
	if err != nil {
		return nil, fmt.Errorf("loadtest: tls-alpn-01 certificate: %w", err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: s.alpnKey}, nil
}
