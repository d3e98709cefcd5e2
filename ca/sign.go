package ca

import (
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"time"

	zx509 "github.com/zmap/zcrypto/x509"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// This file holds the two signatures of lint-then-sign.
//
// The linted copy is built by crypto/x509 from the template (so the
// TBSCertificate encoding is Go's, like any x509.CreateCertificate output)
// and signed with the throwaway key. x509.CreateCertificate then verifies
// the signature it got from its signer; for the throwaway copy, which is
// never handed out, that verification is pure cost (an ECDSA verification
// costs more than the whole rest of certificate building), so
// tbsCapture stops CreateCertificate right after it has handed over the
// TBSCertificate and the copy is assembled here.
//
// The issuer key then signs exactly those TBSCertificate bytes (not a
// second CreateCertificate run from the template), so the certificate
// handed out carries the linted TBSCertificate by construction. Its
// signature is verified against the issuer certificate's key before the
// certificate is stored or returned: a faulty signer (or HSM) signature is
// never handed out.

// errTBSCaptured stops x509.CreateCertificate once tbsCapture has the
// TBSCertificate; it never leaves this package.
var errTBSCaptured = errors.New("ca: internal: TBSCertificate captured")

// tbsCapture is the crypto.Signer given to x509.CreateCertificate for the
// linted copy. crypto/x509 hands a crypto.MessageSigner the whole
// TBSCertificate (crypto.SignMessage); tbsCapture signs it with the
// throwaway key, keeps both and aborts CreateCertificate. With a
// crypto/x509 that only passes digests, Sign is used instead and
// CreateCertificate completes normally.
type tbsCapture struct {
	key crypto.Signer
	tbs []byte
	sig []byte
}

func (t *tbsCapture) Public() crypto.PublicKey { return t.key.Public() }

func (t *tbsCapture) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return t.key.Sign(rand, digest, opts)
}

func (t *tbsCapture) SignMessage(rand io.Reader, msg []byte, opts crypto.SignerOpts) ([]byte, error) {
	sig, err := crypto.SignMessage(t.key, rand, msg, opts)
	if err != nil {
		return nil, err
	}
	t.tbs, t.sig = msg, sig
	return nil, errTBSCaptured
}

// lintedCert is a linted copy: the certificate signed by the throwaway key
// that passed every lint, parsed once (by zcrypto, for zlint).
type lintedCert struct {
	der    []byte
	tbs    []byte // its TBSCertificate, which the issuer key signs
	sigAlg []byte // DER AlgorithmIdentifier, in the TBS and outside it
	z      *zx509.Certificate
}

// buildLintCopy returns the DER of tmpl issued by parent (the issuer's
// certificate with the throwaway public key) and signed by the throwaway
// key.
func buildLintCopy(tmpl, parent *x509.Certificate, pub any, throwaway crypto.Signer) ([]byte, error) {
	capture := &tbsCapture{key: throwaway}
	der, err := x509.CreateCertificate(nil, tmpl, parent, pub, capture)
	switch {
	case err == nil:
		return der, nil // crypto/x509 did not use SignMessage
	case !errors.Is(err, errTBSCaptured) || capture.tbs == nil:
		return nil, err
	}
	alg, err := tbsSignatureAlgorithm(capture.tbs)
	if err != nil {
		return nil, err
	}
	return assembleCertificate(capture.tbs, alg, capture.sig)
}

// tbsSignatureAlgorithm returns the DER AlgorithmIdentifier in the
// signature field of a TBSCertificate (RFC 5280 §4.1.2.3), which the
// certificate's outer signatureAlgorithm must repeat (§4.1.1.2).
func tbsSignatureAlgorithm(tbs []byte) ([]byte, error) {
	s := cryptobyte.String(tbs)
	var body, alg cryptobyte.String
	if !s.ReadASN1(&body, cbasn1.SEQUENCE) || !s.Empty() ||
		!body.SkipOptionalASN1(cbasn1.Tag(0).Constructed().ContextSpecific()) ||
		!body.SkipASN1(cbasn1.INTEGER) ||
		!body.ReadASN1Element(&alg, cbasn1.SEQUENCE) {
		return nil, errors.New("ca: malformed TBSCertificate")
	}
	return alg, nil
}

// certificateParts splits a DER Certificate into its TBSCertificate and
// signatureAlgorithm elements.
func certificateParts(der []byte) (tbs, alg []byte, err error) {
	s := cryptobyte.String(der)
	var body, t, a cryptobyte.String
	if !s.ReadASN1(&body, cbasn1.SEQUENCE) || !s.Empty() ||
		!body.ReadASN1Element(&t, cbasn1.SEQUENCE) ||
		!body.ReadASN1Element(&a, cbasn1.SEQUENCE) {
		return nil, nil, errors.New("ca: malformed certificate")
	}
	return t, a, nil
}

// assembleCertificate encodes Certificate ::= SEQUENCE { tbsCertificate,
// signatureAlgorithm, signatureValue BIT STRING } (RFC 5280 §4.1); a
// CertificateList (§5.1) has the same shape.
func assembleCertificate(tbs, alg, sig []byte) ([]byte, error) {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(tbs)
		b.AddBytes(alg)
		b.AddASN1BitString(sig)
	})
	der, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("ca: encode certificate: %w", err)
	}
	return der, nil
}

// signerOpts returns the options x509.CreateCertificate would give a
// signer for algo (the hash, or PSS parameters with a salt as long as the
// hash); only the algorithms crypto/x509 picks for issuer keys are known.
func signerOpts(algo x509.SignatureAlgorithm) (crypto.SignerOpts, error) {
	switch algo {
	case x509.ECDSAWithSHA256, x509.SHA256WithRSA:
		return crypto.SHA256, nil
	case x509.ECDSAWithSHA384, x509.SHA384WithRSA:
		return crypto.SHA384, nil
	case x509.ECDSAWithSHA512, x509.SHA512WithRSA:
		return crypto.SHA512, nil
	case x509.SHA256WithRSAPSS:
		return &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}, nil
	case x509.SHA384WithRSAPSS:
		return &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA384}, nil
	case x509.SHA512WithRSAPSS:
		return &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA512}, nil
	case x509.PureEd25519:
		return crypto.Hash(0), nil
	}
	return nil, fmt.Errorf("ca: signature algorithm %v is not supported", algo)
}

// probeSignatureAlgorithm makes one throwaway certificate under parent
// with the throwaway key and returns the signature algorithm crypto/x509
// picks for that key type (the same for every certificate, as templates
// leave SignatureAlgorithm unset) and its DER AlgorithmIdentifier.
func probeSignatureAlgorithm(parent *x509.Certificate, throwaway crypto.Signer) (x509.SignatureAlgorithm, []byte, error) {
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "hsmca signature algorithm probe"},
		NotBefore: now, NotAfter: now.Add(time.Hour),
	}
	der, err := x509.CreateCertificate(nil, tmpl, parent, throwaway.Public(), throwaway)
	if err != nil {
		return 0, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return 0, nil, err
	}
	_, alg, err := certificateParts(der)
	if err != nil {
		return 0, nil, err
	}
	if _, err := signerOpts(cert.SignatureAlgorithm); err != nil {
		return 0, nil, err
	}
	return cert.SignatureAlgorithm, alg, nil
}
