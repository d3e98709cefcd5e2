package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"
)

// lintCorpus returns certificates that make many lints apply, pass, warn
// and fail: a clean server leaf, CA certificates (the configurable CA
// lints), an RSA leaf, a leaf with bad DNS names, a long-lived leaf
// without EKU, an S/MIME leaf and a leaf with a SAN-less CN.
func lintCorpus(t testing.TB) map[string][]byte {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafEC, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafRSA, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Truncate(time.Second)
	caT := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "corpus CA", OrganizationalUnit: []string{"unit"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		SubjectKeyId: []byte{1, 2, 3, 4},
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caT, caT, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	u, _ := url.Parse("spiffe://corp/svc")
	leaf := func(mut func(*x509.Certificate)) *x509.Certificate {
		c := &x509.Certificate{
			SerialNumber: new(big.Int).SetBytes([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}),
			NotBefore:    now.Add(-time.Hour), NotAfter: now.Add(90 * 24 * time.Hour),
			BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			DNSNames:              []string{"a.svc.corp"},
			CRLDistributionPoints: []string{"http://pki.svc.corp/crl/x.crl"},
			IssuingCertificateURL: []string{"http://pki.svc.corp/issuer/x.crt"},
			Policies:              []x509.OID{oidDomainValidated},
		}
		if mut != nil {
			mut(c)
		}
		return c
	}
	certs := map[string]struct {
		tmpl *x509.Certificate
		pub  crypto.PublicKey
	}{
		"ca":          {caT, caKey.Public()},
		"server":      {leaf(nil), leafEC.Public()},
		"server-ip":   {leaf(func(c *x509.Certificate) { c.IPAddresses = []net.IP{net.ParseIP("10.1.2.3")} }), leafEC.Public()},
		"rsa":         {leaf(func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageKeyEncipherment }), leafRSA.Public()},
		"bad-dns":     {leaf(func(c *x509.Certificate) { c.DNSNames = []string{"under_score.svc.corp", "*.*.svc.corp", "-x.corp"} }), leafEC.Public()},
		"long-no-eku": {leaf(func(c *x509.Certificate) { c.ExtKeyUsage = nil; c.NotAfter = now.Add(5 * 365 * 24 * time.Hour) }), leafEC.Public()},
		"cn-not-san": {leaf(func(c *x509.Certificate) {
			c.Subject = pkix.Name{CommonName: "other.svc.corp", Country: []string{"XX"}}
			c.CRLDistributionPoints = nil
		}), leafEC.Public()},
		"smime": {leaf(func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}
			c.DNSNames, c.EmailAddresses, c.URIs, c.Policies = nil, []string{"a@svc.corp"}, []*url.URL{u}, nil
		}), leafEC.Public()},
		"sub-ca": {leaf(func(c *x509.Certificate) {
			c.IsCA, c.KeyUsage, c.ExtKeyUsage, c.DNSNames = true, x509.KeyUsageCertSign, nil, nil
			c.Subject = pkix.Name{CommonName: "sub", Country: []string{"ZZZ"}, OrganizationalUnit: []string{"ou"}}
		}), leafEC.Public()},
	}
	out := map[string][]byte{}
	for name, c := range certs {
		parent := caCert
		if name == "ca" {
			parent = caT
		}
		der, err := x509.CreateCertificate(rand.Reader, c.tmpl, parent, c.pub, caKey)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		out[name] = der
	}
	return out
}

// TestCertLintersMatchZlint checks that running lints directly (shared,
// pre-configured instances, framework facts computed once) gives, lint by
// lint, the results of zlint.LintCertificateEx over the same registry:
// for every profile's default selection and for zlint's whole certificate
// registry.
func TestCertLintersMatchZlint(t *testing.T) {
	regs := map[string]lint.Registry{}
	for name, lc := range map[string]struct {
		c      LintConfig
		keepCN bool
	}{
		"server-default": {LintConfig{}, false},
		"server-keep-cn": {LintConfig{}, true},
		"client":         {LintConfig{Sources: []string{"RFC5280", "RFC5480", "RFC3279", "RFC8813"}}, false},
		"public-web":     {LintConfig{KeepPublicWebLints: true, Sources: []string{"CABF_SMIME_BR", "CABF_BR", "RFC5280"}}, false},
	} {
		reg, err := buildRegistry(lc.c, lc.keepCN)
		if err != nil {
			t.Fatal(err)
		}
		regs[name] = reg
	}
	regs["zlint-global"] = lint.GlobalRegistry()

	corpus := lintCorpus(t)
	for rname, reg := range regs {
		ls, err := newCertLinters(reg)
		if err != nil {
			t.Fatal(err)
		}
		if len(ls) != len(reg.CertificateLints().Lints()) {
			t.Fatalf("%s: %d linters for %d lints", rname, len(ls), len(reg.CertificateLints().Lints()))
		}
		for cname, der := range corpus {
			zc, err := zx509.ParseCertificate(der)
			if err != nil {
				t.Fatal(err)
			}
			want := zlint.LintCertificateEx(zc, reg).Results
			got := map[string]LintResult{}
			for _, r := range ls.run(zc) {
				got[r.Lint] = r
			}
			findings := 0
			for name, w := range want {
				g, ok := got[name]
				if w.Status < lint.Warn {
					if ok {
						t.Errorf("%s/%s: %s: got %s, zlint says %s", rname, cname, name, g.Status, w.Status)
					}
					continue
				}
				findings++
				if !ok || g.Status != w.Status.String() || g.Details != w.Details {
					t.Errorf("%s/%s: %s: got %+v, zlint says %s %q", rname, cname, name, g, w.Status, w.Details)
				}
			}
			if len(got) != findings {
				t.Errorf("%s/%s: %d findings, zlint has %d", rname, cname, len(got), findings)
			}
			if rname == "zlint-global" && cname == "bad-dns" && findings == 0 {
				t.Errorf("the corpus certificate with bad DNS names has no zlint finding; the comparison is vacuous")
			}
		}
	}
}

// TestCertLintersApplicability checks, lint by lint, that the direct
// runner and zlint agree on whether each lint ran (NA and NE are both
// "did not run" here) for zlint's whole certificate registry.
func TestCertLintersApplicability(t *testing.T) {
	reg := lint.GlobalRegistry()
	ls, err := newCertLinters(reg)
	if err != nil {
		t.Fatal(err)
	}
	for cname, der := range lintCorpus(t) {
		zc, err := zx509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		want := zlint.LintCertificateEx(zc, reg).Results
		facts := certFactsOf(zc)
		ran := 0
		for i := range ls {
			r := ls[i].execute(zc, &facts)
			w := want[ls[i].l.Name]
			zlintRan := w.Status != lint.NA && w.Status != lint.NE
			if (r != notApplicable) != zlintRan {
				t.Errorf("%s: %s: ran=%v, zlint status %s", cname, ls[i].l.Name, r != notApplicable, w.Status)
			}
			if zlintRan {
				ran++
				if r.Status != w.Status {
					t.Errorf("%s: %s: status %s, zlint %s", cname, ls[i].l.Name, r.Status, w.Status)
				}
			}
		}
		if ran < 50 {
			t.Errorf("%s: only %d lints ran", cname, ran)
		}
	}
}

// TestDefaultLintersShareInstances checks that every lint of the default
// selections is prepared once (no per-certificate construction or
// reflective Configure), and that a lint is shared safely under
// concurrent use (run with -race).
func TestDefaultLintersShareInstances(t *testing.T) {
	for _, lc := range []LintConfig{{}, {Sources: []string{"RFC5280", "RFC5480", "RFC3279", "RFC8813"}}} {
		reg, err := buildRegistry(lc, false)
		if err != nil {
			t.Fatal(err)
		}
		ls, err := newCertLinters(reg)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range ls {
			if l.shared == nil {
				t.Errorf("lint %s is built per certificate; review it for reusableLints", l.l.Name)
			}
		}
	}
	reg, _ := buildRegistry(LintConfig{}, false)
	ls, _ := newCertLinters(reg)
	corpus := lintCorpus(t)
	var wg sync.WaitGroup
	for _, der := range corpus {
		zc, err := zx509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		want := len(ls.run(zc))
		for g := 0; g < 2; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Each goroutine has its own parse: zlint's helpers may
				// append to a certificate's slices, so one parsed
				// certificate is never linted concurrently (issuance
				// parses each copy itself); the lint instances are shared.
				zc, err := zx509.ParseCertificate(der)
				if err != nil {
					t.Error(err)
					return
				}
				for i := 0; i < 3; i++ {
					if got := len(ls.run(zc)); got != want {
						t.Errorf("concurrent run: %d findings, want %d", got, want)
						return
					}
				}
			}()
		}
	}
	wg.Wait()
}
