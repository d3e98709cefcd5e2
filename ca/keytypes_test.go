package ca_test

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"path/filepath"
	"testing"
	"time"

	"github.com/hsmca/hsmca/ca"
	"github.com/hsmca/hsmca/store"
)

// TestIssuerKeyTypes issues with RSA and Ed25519 issuer keys (the
// throwaway key must match each) and with RSA and Ed25519 subject keys.
func TestIssuerKeyTypes(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	for name, key := range map[string]crypto.Signer{"rsa-2048": rsaKey, "ed25519": edKey} {
		t.Run(name, func(t *testing.T) {
			p := newPKI(t)
			tmpl := &x509.Certificate{
				SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "issuing " + name, Organization: []string{"hsmca"}},
				NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour),
				IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
				KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
			}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, p.root, key.Public(), p.rootKey)
			if err != nil {
				t.Fatal(err)
			}
			p.inter, _ = x509.ParseCertificate(der)
			p.interKey = key
			st, err := store.Open(filepath.Join(t.TempDir(), "ca.db"))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			tc := newTestCAWith(t, baseConfig(), ca.Options{}, p, st, "")
			ctx := context.Background()
			// The BRs allow neither Ed25519 subject keys nor Ed25519
			// signatures, so the server profile must refuse them by lint.
			cases := []struct {
				profile string
				csr     csrOpts
			}{
				{"server", csrOpts{dns: []string{"a.svc.corp"}, key: rsaKey}},
				{"client", csrOpts{cn: "alice", emails: []string{"alice@svc.corp"}, key: edKey}},
			}
			for _, c := range cases {
				got, err := tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, c.csr), Profile: c.profile})
				if name == "ed25519" && c.profile == "server" {
					var le *ca.ErrLint
					if !errors.As(err, &le) {
						t.Fatalf("Ed25519 issuer, server profile: %v, want ErrLint", err)
					}
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				mustLintClean(t, tc.CA, c.profile, got.DER)
				cert, _ := x509.ParseCertificate(got.DER)
				if err := cert.CheckSignatureFrom(p.inter); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}, key: edKey}), Profile: "server"}); err == nil {
				t.Error("server profile accepted an Ed25519 subject key")
			}
			der, err = tc.GenerateCRL(ctx, "")
			if err != nil {
				t.Fatal(err)
			}
			crl, _ := x509.ParseRevocationList(der)
			if err := crl.CheckSignatureFrom(p.inter); err != nil {
				t.Fatal(err)
			}
		})
	}
}
