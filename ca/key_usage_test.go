package ca_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"testing"

	"github.com/hsmca/hsmca/ca"
)

// A certificate gets only the key usages its subject key can serve:
// keyEncipherment and dataEncipherment for RSA, keyAgreement for ECDSA
// (RFC 5480 §3), and for Ed25519 only digitalSignature and
// contentCommitment (RFC 8410 §5).
func TestKeyUsageByKeyType(t *testing.T) {
	cfg := baseConfig()
	// (zlint finds keyEncipherment with dataEncipherment inconsistent with
	// emailProtection, so the RSA certificate is issued under an
	// excluded lint.)
	cfg.Profiles = map[string]ca.Profile{"all": {
		ExtKeyUsages:    []string{"emailProtection"},
		SANTypes:        []string{"email"},
		KeyUsages:       []string{"digitalSignature", "contentCommitment", "keyEncipherment", "dataEncipherment", "keyAgreement"},
		AllowedKeyTypes: []string{"ecdsa-p256", "rsa-2048", "ed25519"},
		Lints: ca.LintConfig{Sources: []string{"RFC5280", "RFC5480", "RFC3279", "RFC8813"},
			Exclude: []string{"e_key_usage_and_extended_key_usage_inconsistent"}},
	}}
	tc := newTestCA(t, cfg, ca.Options{})
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	sig := x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment
	for _, tt := range []struct {
		name string
		key  crypto.Signer
		want x509.KeyUsage
	}{
		{"ecdsa", ecKey, sig | x509.KeyUsageKeyAgreement},
		{"rsa", rsaKey, sig | x509.KeyUsageKeyEncipherment | x509.KeyUsageDataEncipherment},
		{"ed25519", edKey, sig},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tc.Issue(context.Background(), ca.IssueRequest{CSR: makeCSR(t, csrOpts{emails: []string{"a@svc.corp"}, key: tt.key}), Profile: "all"})
			if err != nil {
				t.Fatal(err)
			}
			c, err := x509.ParseCertificate(got.DER)
			if err != nil {
				t.Fatal(err)
			}
			if c.KeyUsage != tt.want {
				t.Errorf("key usage %09b, want %09b", c.KeyUsage, tt.want)
			}
			mustLintClean(t, tc.CA, "all", got.DER)
		})
	}
}
