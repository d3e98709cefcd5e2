package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"strings"
	"testing"
	"time"
)

// testIssuer returns a CA certificate for key, self-signed. It outlives
// testLeafTemplate's certificates by an hour: with both ending an hour
// from now, a leaf made in the next second (its NotAfter rounded into that
// second) outlived the issuer, whose NotAfter the encoding rounds down,
// and TestOwnChecks/clean failed now and then.
func testIssuer(t testing.TB, key crypto.Signer) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sign test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(2 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		SubjectKeyId: []byte{9, 9, 9},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func testLeafTemplate() *x509.Certificate {
	return &x509.Certificate{
		SerialNumber: new(big.Int).SetBytes([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9}),
		NotBefore:    time.Now().Add(-time.Minute).Truncate(time.Second), NotAfter: time.Now().Add(time.Hour).Truncate(time.Second),
		DNSNames: []string{"a.svc.corp"}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
}

// TestBuildLintCopyIsCreateCertificate checks, for each issuer key type,
// that the linted copy built by capturing the TBSCertificate is what
// x509.CreateCertificate produces (same TBSCertificate bytes, same
// signature algorithm), parses, and carries a valid throwaway signature.
func TestBuildLintCopyIsCreateCertificate(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for name, key := range map[string]crypto.Signer{"p256": p256, "p384": p384, "rsa": rsaKey, "ed25519": edKey} {
		t.Run(name, func(t *testing.T) {
			parent := testIssuer(t, key)
			tmpl := testLeafTemplate()
			der, err := buildLintCopy(tmpl, parent, leafKey.Public(), key)
			if err != nil {
				t.Fatal(err)
			}
			got, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatalf("linted copy does not parse: %v", err)
			}
			if err := got.CheckSignatureFrom(parent); err != nil {
				t.Errorf("throwaway signature: %v", err)
			}
			refDER, err := x509.CreateCertificate(rand.Reader, tmpl, parent, leafKey.Public(), key)
			if err != nil {
				t.Fatal(err)
			}
			ref, _ := x509.ParseCertificate(refDER)
			if !bytes.Equal(got.RawTBSCertificate, ref.RawTBSCertificate) {
				t.Error("TBSCertificate differs from x509.CreateCertificate's")
			}
			if got.SignatureAlgorithm != ref.SignatureAlgorithm {
				t.Errorf("signature algorithm %v, CreateCertificate %v", got.SignatureAlgorithm, ref.SignatureAlgorithm)
			}
			_, gotAlg, _ := certificateParts(der)
			_, refAlg, _ := certificateParts(refDER)
			if !bytes.Equal(gotAlg, refAlg) {
				t.Error("outer signatureAlgorithm encoding differs from CreateCertificate's")
			}
			if _, err := signerOpts(got.SignatureAlgorithm); err != nil {
				t.Error(err)
			}
			capture := &tbsCapture{key: key}
			if _, err := x509.CreateCertificate(nil, tmpl, parent, leafKey.Public(), capture); !errors.Is(err, errTBSCaptured) {
				t.Errorf("crypto/x509 did not hand the TBSCertificate to a MessageSigner (err %v): the throwaway signature is verified again", err)
			}
		})
	}
}

// digestOnlySigner hides any MessageSigner method of its key.
type digestOnlySigner struct{ k crypto.Signer }

func (d digestOnlySigner) Public() crypto.PublicKey { return d.k.Public() }
func (d digestOnlySigner) Sign(r io.Reader, dg []byte, o crypto.SignerOpts) ([]byte, error) {
	return d.k.Sign(r, dg, o)
}

// badSigner returns a signature over other bytes.
type badSigner struct{ k crypto.Signer }

func (b badSigner) Public() crypto.PublicKey { return b.k.Public() }
func (b badSigner) Sign(r io.Reader, dg []byte, o crypto.SignerOpts) ([]byte, error) {
	return b.k.Sign(r, make([]byte, len(dg)), o)
}

// TestSignFinal checks that the issuer signs the linted TBSCertificate
// itself (with a signer that only signs digests too), and that a signature
// that does not verify under the issuer certificate is refused.
func TestSignFinal(t *testing.T) {
	issKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	issCert := testIssuer(t, issKey)
	st, err := newIssuerState(Issuer{Name: "t", Cert: issCert, Signer: issKey})
	if err != nil {
		t.Fatal(err)
	}
	if st.p256 == nil {
		t.Fatal("a P-256 issuer has no precomputed verifier: signFinal's check below would not exercise it")
	}
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := buildLintCopy(testLeafTemplate(), st.lintParent, leafKey.Public(), st.lintKey)
	if err != nil {
		t.Fatal(err)
	}
	tbs, alg, err := certificateParts(der)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(alg, st.sigAlgDER) {
		t.Fatal("linted copy's algorithm is not the probed one")
	}
	linted := &lintedCert{der: der, tbs: tbs, sigAlg: alg}
	c := &CA{}
	with := func(s crypto.Signer) *issuerState {
		cp := *st
		cp.Signer = s
		return &cp
	}
	for name, signer := range map[string]crypto.Signer{"key": issKey, "digest-only": digestOnlySigner{issKey}} {
		t.Run(name, func(t *testing.T) {
			final, err := c.signFinal(with(signer), linted)
			if err != nil {
				t.Fatal(err)
			}
			fc, err := x509.ParseCertificate(final)
			if err != nil {
				t.Fatalf("final certificate does not parse: %v", err)
			}
			if !bytes.Equal(fc.RawTBSCertificate, tbs) {
				t.Error("final TBSCertificate is not the linted one")
			}
			if err := fc.CheckSignatureFrom(issCert); err != nil {
				t.Errorf("final signature: %v", err)
			}
		})
	}
	_, err = c.signFinal(with(badSigner{issKey}), linted)
	if err == nil || !strings.Contains(err.Error(), "does not verify") {
		t.Fatalf("bad signature: err %v, want a refusal", err)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := c.signFinal(with(other), linted); err == nil {
		t.Fatal("a signer with another key was used")
	}
}

func TestCertificatePartsRejectsGarbage(t *testing.T) {
	for name, in := range map[string][]byte{
		"empty":     nil,
		"not a seq": {0x02, 0x01, 0x01},
		"trailing":  {0x30, 0x00, 0x00},
		"short":     {0x30, 0x03, 0x30, 0x00},
	} {
		if _, _, err := certificateParts(in); err == nil {
			t.Errorf("%s: accepted", name)
		}
		if _, err := tbsSignatureAlgorithm(in); err == nil {
			t.Errorf("%s: TBS accepted", name)
		}
	}
}

// FuzzCertificateParts feeds arbitrary bytes to the DER splitters used on
// the linted copy: they must return an error, never panic, and what they
// return must be a sub-slice of their input.
func FuzzCertificateParts(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	iss := testIssuer(f, key)
	f.Add(iss.Raw)
	f.Add(iss.RawTBSCertificate)
	f.Add([]byte{0x30, 0x00})
	f.Add([]byte{0x30, 0x06, 0x30, 0x00, 0x30, 0x00, 0x03, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		if tbs, alg, err := certificateParts(b); err == nil {
			if !bytes.Contains(b, tbs) || !bytes.Contains(b, alg) {
				t.Fatal("parts are not from the input")
			}
			der, err := assembleCertificate(tbs, alg, []byte{1, 2, 3})
			if err != nil {
				t.Fatal(err)
			}
			if tbs2, alg2, err := certificateParts(der); err != nil || !bytes.Equal(tbs2, tbs) || !bytes.Equal(alg2, alg) {
				t.Fatalf("reassembled certificate does not split back: %v", err)
			}
		}
		if alg, err := tbsSignatureAlgorithm(b); err == nil && !bytes.Contains(b, alg) {
			t.Fatal("algorithm is not from the input")
		}
	})
}
