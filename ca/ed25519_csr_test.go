package ca_test

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/hsmca/hsmca/ca"
)

// identitySigner "holds" the Ed25519 identity point, a small-order public
// key: the signature R = identity, S = 0 verifies for every message, so
// anyone can sign for it, and its CSR's signature verifies.
type identitySigner struct{}

func (identitySigner) Public() crypto.PublicKey {
	pk := make([]byte, ed25519.PublicKeySize)
	pk[0] = 1
	return ed25519.PublicKey(pk)
}

func (identitySigner) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	sig := make([]byte, ed25519.SignatureSize)
	sig[0] = 1
	return sig, nil
}

// A CSR for a small-order Ed25519 key is refused with a rule that says so,
// although its signature verifies, and nothing is signed or recorded.
func TestIssueRefusesSmallOrderEd25519Key(t *testing.T) {
	tc := newTestCA(t, baseConfig(), ca.Options{})
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ops-mallory"}, EmailAddresses: []string{"mallory@corp.example"}}, identitySigner{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.ParseCSR(der); err != nil {
		t.Fatalf("the forged CSR's signature should verify: %v", err)
	}
	_, err = tc.Issue(context.Background(), ca.IssueRequest{CSR: der, Profile: "operator"})
	var bad *ca.ErrBadCSR
	if !errors.As(err, &bad) || !strings.Contains(bad.Error(), "Ed25519") || !strings.Contains(bad.Error(), "small order") {
		t.Fatalf("got %v; want a bad-CSR refusal of the small-order Ed25519 key", err)
	}
	if n := tc.signer.calls.Load(); n != 0 {
		t.Fatalf("the issuer key signed %d times", n)
	}
	if n := countCerts(t, tc.CA); n != 0 {
		t.Fatalf("%d records", n)
	}
	// A real Ed25519 key is fine.
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	if _, err := tc.Issue(context.Background(), ca.IssueRequest{CSR: makeCSR(t, csrOpts{cn: "ops-jane", emails: []string{"jane@corp.example"}, key: key}), Profile: "operator"}); err != nil {
		t.Fatalf("Ed25519 key refused: %v", err)
	}
}
