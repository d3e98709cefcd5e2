package ca_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"net/url"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsmca/hsmca/ca"
	"github.com/hsmca/hsmca/store"
)

// pki is a root and an intermediate made for a test.
type pki struct {
	root, inter       *x509.Certificate
	rootKey, interKey crypto.Signer
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	interKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	return newPKIWith(t, interKey)
}

// newPKIWith is newPKI with the given issuing key (a module's signer).
func newPKIWith(t testing.TB, interKey crypto.Signer) *pki {
	t.Helper()
	rootKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	now := time.Now()
	rootT := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "hsmca test root", Organization: []string{"hsmca"}},
		NotBefore:             now.Add(-24 * time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootT, rootT, rootKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(rootDER)
	interT := &x509.Certificate{
		SerialNumber:          big.NewInt(2),
		Subject:               pkix.Name{CommonName: "hsmca test issuing 1", Organization: []string{"hsmca"}},
		NotBefore:             now.Add(-24 * time.Hour),
		NotAfter:              now.Add(5 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	interDER, err := x509.CreateCertificate(rand.Reader, interT, root, interKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	inter, _ := x509.ParseCertificate(interDER)
	return &pki{root: root, inter: inter, rootKey: rootKey, interKey: interKey}
}

// countingSigner counts Sign calls and fails them when fail returns an
// error (a fake for faults a real module cannot produce on demand).
type countingSigner struct {
	crypto.Signer
	calls   atomic.Int64
	fail    atomic.Pointer[error]
	corrupt atomic.Bool // return a signature over other bytes
}

func (s *countingSigner) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	s.calls.Add(1)
	if e := s.fail.Load(); e != nil {
		return nil, *e
	}
	if s.corrupt.Load() {
		other := make([]byte, len(d))
		return s.Signer.Sign(r, other, o)
	}
	return s.Signer.Sign(r, d, o)
}

func (s *countingSigner) failWith(err error) { s.fail.Store(&err) }

var errSealedHSM = errors.New("hsm: partition is sealed")

// sealedErr mimics how the CLI wraps the HSM's sealed error.
type sealedErr struct{}

func (sealedErr) Error() string        { return errSealedHSM.Error() }
func (sealedErr) Is(target error) bool { return target == ca.ErrSealed }

func baseConfig() ca.Config {
	return ca.Config{
		Issuers: []ca.IssuerConfig{{Name: "issuing-1", Certificate: "unused.pem"}},
		URLs: ca.URLs{
			CRLBase: "http://pki.svc.corp/crl",
			AIABase: "http://pki.svc.corp/issuer",
			OCSP:    "http://pki.svc.corp/ocsp",
		},
	}
}

type testCA struct {
	*ca.CA
	pki    *pki
	signer *countingSigner
	store  *store.Store
	path   string
}

func newTestCA(t testing.TB, cfg ca.Config, opts ca.Options) *testCA {
	t.Helper()
	p := newPKI(t)
	path := filepath.Join(t.TempDir(), "ca.db")
	st, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return newTestCAWith(t, cfg, opts, p, st, path)
}

func newTestCAWith(t testing.TB, cfg ca.Config, opts ca.Options, p *pki, st ca.Store, path string) *testCA {
	t.Helper()
	signer := &countingSigner{Signer: p.interKey}
	c, err := ca.New(cfg, []ca.Issuer{{Name: "issuing-1", Cert: p.inter, Chain: []*x509.Certificate{p.root}, Signer: signer}}, st, opts)
	if err != nil {
		t.Fatal(err)
	}
	tc := &testCA{CA: c, pki: p, signer: signer, path: path}
	if s, ok := st.(*store.Store); ok {
		tc.store = s
	}
	return tc
}

type csrOpts struct {
	cn     string
	dns    []string
	ips    []string
	emails []string
	uris   []string
	key    crypto.Signer
}

func makeCSR(t testing.TB, o csrOpts) []byte {
	t.Helper()
	key := o.key
	if key == nil {
		key, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: o.cn}, DNSNames: o.dns, EmailAddresses: o.emails}
	for _, ip := range o.ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
	}
	for _, u := range o.uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// countCerts returns how many records the store holds, refused ones
// included.
func countCerts(t testing.TB, c *ca.CA) int {
	t.Helper()
	n := 0
	for _, f := range []ca.ListFilter{{}, {Refused: true}} {
		l, err := c.List(context.Background(), f)
		if err != nil {
			t.Fatal(err)
		}
		n += len(l)
	}
	return n
}

// mustLintClean lints der with the profile's lint set (the same zlint
// registry the CA uses) and fails on any warning, error or fatal.
func mustLintClean(t testing.TB, c *ca.CA, profile string, der []byte) {
	t.Helper()
	res, err := ca.LintDER(c, profile, der)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) > 0 {
		t.Fatalf("zlint findings for %s certificate: %+v", profile, res)
	}
}
