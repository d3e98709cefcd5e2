package integration_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hsmca/hsmca/ca"
	"github.com/hsmca/hsmca/ct"
	"github.com/hsmca/hsmca/ct/cttest"
	"github.com/hsmca/hsmca/store"
)

type pki struct {
	root, inter *x509.Certificate
	interKey    *ecdsa.PrivateKey
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	rootKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	interKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	create := func(tmpl, parent *x509.Certificate, pub any, key *ecdsa.PrivateKey) *x509.Certificate {
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	rootT := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "hsmca ct integration root", Organization: []string{"hsmca"}},
		NotBefore: now.Add(-24 * time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	root := create(rootT, rootT, rootKey.Public(), rootKey)
	interT := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "hsmca ct integration issuing", Organization: []string{"hsmca"}},
		NotBefore: now.Add(-24 * time.Hour), NotAfter: now.Add(5 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	return &pki{root: root, inter: create(interT, root, interKey.Public(), rootKey), interKey: interKey}
}

// newCA is a CA with one profile "ct" (the default server profile with CT
// in mode) getting SCTs from sub, on a real store file.
func newCA(t testing.TB, p *pki, mode ca.CTMode, sub ca.SCTSource) *ca.CA {
	t.Helper()
	prof := ca.DefaultProfiles()["server"]
	prof.CT = ca.CTConfig{Mode: mode}
	cfg := ca.Config{
		Issuers:  []ca.IssuerConfig{{Name: "issuing-1", Certificate: "unused.pem"}},
		Profiles: map[string]ca.Profile{"ct": prof},
		URLs:     ca.URLs{CRLBase: "http://pki.svc.corp/crl", AIABase: "http://pki.svc.corp/issuer", OCSP: "http://pki.svc.corp/ocsp"},
	}
	st, err := store.Open(filepath.Join(t.TempDir(), "ca.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	c, err := ca.New(cfg, []ca.Issuer{{Name: "issuing-1", Cert: p.inter, Chain: []*x509.Certificate{p.root}, Signer: p.interKey}}, st, ca.Options{SCTs: sub})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func csr(t testing.TB, names ...string) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: names}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func tesseractLog(ts *cttest.TesseraCT) ct.LogConfig {
	return ct.LogConfig{Name: "tesseract", URL: ts.URL, PublicKey: ts.PublicKeyPEM(), Operator: "local"}
}

func failingLog(t *testing.T) ct.LogConfig {
	f := cttest.NewFakeLog(t, cttest.Fail500)
	f.Fail500Count = -1
	return ct.LogConfig{Name: "broken", URL: f.URL, PublicKey: f.PublicKeyPEM(), Operator: "elsewhere"}
}

func quick(c ct.Config) ct.Config {
	c.Backoff, c.Retries, c.Deadline = time.Millisecond, 1, time.Minute
	return c
}

// TestCAEmbedWithTesseraCT: a CT-enabled profile issues a certificate whose
// embedded SCT comes from TesseraCT and verifies; the log grows by the
// precertificate; concurrent issuances all get their SCTs.
func TestCAEmbedWithTesseraCT(t *testing.T) {
	p := newPKI(t)
	ts := cttest.StartTesseraCT(t, p.root)
	sub, err := ct.New(quick(ct.Config{Logs: []ct.LogConfig{tesseractLog(ts)}}), ct.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := newCA(t, p, ca.CTEmbed, sub)
	before := ts.WaitTreeSize(t, 0)

	got, err := c.Issue(context.Background(), ca.IssueRequest{CSR: csr(t, "www.svc.corp"), Profile: "ct"})
	if err != nil {
		t.Fatalf("issue: %v\nTesseraCT:\n%s", err, ts.Output())
	}
	cert, err := x509.ParseCertificate(got.DER)
	if err != nil {
		t.Fatal(err)
	}
	v, err := ct.VerifyEmbedded(cert, p.inter, sub.Logs())
	if err != nil || len(v) != 1 || v[0].LogName != "tesseract" {
		t.Fatalf("VerifyEmbedded = %+v, %v", v, err)
	}
	ts.WaitTreeSize(t, before+1)

	// Parallel issuances: each submits on its own, sharing TesseraCT's
	// batches and checkpoints.
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := c.Issue(context.Background(), ca.IssueRequest{CSR: csr(t, fmt.Sprintf("p%d.svc.corp", i)), Profile: "ct"})
			if err != nil {
				errs <- err
				return
			}
			cert, err := x509.ParseCertificate(got.DER)
			if err == nil {
				_, err = ct.VerifyEmbedded(cert, p.inter, sub.Logs())
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	ts.WaitTreeSize(t, before+1+n)
}

// TestCAPolicyFailures: with a log that always fails and a policy needing
// two operators, embed refuses (naming the failing log) and leaves a
// revocable precertificate; best-effort issues with TesseraCT's SCT and
// records the failure.
func TestCAPolicyFailures(t *testing.T) {
	p := newPKI(t)
	ts := cttest.StartTesseraCT(t, p.root)
	cfg := quick(ct.Config{Logs: []ct.LogConfig{tesseractLog(ts), failingLog(t)}, MinSCTs: 2, MinOperators: 2})

	t.Run("embed", func(t *testing.T) {
		sub, err := ct.New(cfg, ct.Options{})
		if err != nil {
			t.Fatal(err)
		}
		c := newCA(t, p, ca.CTEmbed, sub)
		_, err = c.Issue(context.Background(), ca.IssueRequest{CSR: csr(t, "embed.svc.corp"), Profile: "ct"})
		var cterr *ca.ErrCT
		if !errors.As(err, &cterr) || !errors.Is(err, ct.ErrPolicy) {
			t.Fatalf("err = %v, want ca.ErrCT wrapping ct.ErrPolicy", err)
		}
		if !strings.Contains(err.Error(), "log broken: http_5xx") {
			t.Errorf("error does not name the failing log: %v", err)
		}
		if _, err := c.Revoke(context.Background(), cterr.Serial, ca.ReasonCessationOfOperation); err != nil {
			t.Errorf("revoke the precertificate's serial: %v", err)
		}
	})
	t.Run("best-effort", func(t *testing.T) {
		sub, err := ct.New(cfg, ct.Options{})
		if err != nil {
			t.Fatal(err)
		}
		c := newCA(t, p, ca.CTBestEffort, sub)
		got, err := c.Issue(context.Background(), ca.IssueRequest{CSR: csr(t, "best.svc.corp"), Profile: "ct"})
		if err != nil {
			t.Fatal(err)
		}
		if len(got.CTFailures) == 0 || !strings.Contains(strings.Join(got.CTFailures, " "), "broken") {
			t.Errorf("CT failures not recorded: %q", got.CTFailures)
		}
		cert, err := x509.ParseCertificate(got.DER)
		if err != nil {
			t.Fatal(err)
		}
		v, err := ct.VerifyEmbedded(cert, p.inter, sub.Logs())
		if err != nil || len(v) != 1 || v[0].LogName != "tesseract" {
			t.Fatalf("VerifyEmbedded = %+v, %v", v, err)
		}
	})
}
