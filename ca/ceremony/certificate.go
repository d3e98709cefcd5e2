package ceremony

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"
)

// The certificate ceremonies: root, intermediate and cross-sign.

func (r *runner) root(context.Context) error {
	s := &r.f.Spec
	if err := r.requirePerOperation(s.Key.Partition); err != nil {
		return err
	}
	var ref KeyRef
	var err error
	if s.Key.Existing {
		if ref, err = r.existingKey(); err != nil {
			return err
		}
	}
	tmpl, err := r.caTemplate(s.Certificate, nil, true)
	if err != nil {
		return err
	}
	if s.Key.Existing {
		err = r.activate(s.Key.Partition, 1)
	} else {
		// Lint before the key exists: a refused template leaves no key.
		if err = r.preflight(tmpl, nil, s.Key.Type, s.Key.Type); err == nil {
			ref, err = r.generateKey(1)
		}
	}
	if err != nil {
		return err
	}
	signer, err := r.opts.Keys.Signer(s.Key.Partition, ref.ID)
	if err != nil {
		return fmt.Errorf("ceremony: %w", err)
	}
	der, err := r.lintAndSign(tmpl, tmpl, ref.Public, signer, keyTypeOf(ref.Public))
	if err != nil {
		return err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("ceremony: parse result: %w", err)
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		return fmt.Errorf("ceremony: root self-signature does not verify: %w", err)
	}
	r.check("self-signature of %s verifies", cert.Subject)
	if !publicKeysEqual(cert.PublicKey, ref.Public) {
		return errors.New("ceremony: root certificate's key is not the module key")
	}
	r.check("certificate key equals module key %s", ref.ID)
	if err := verifyChain(cert, cert, nil); err != nil {
		return err
	}
	if err := r.syncAudit(signer); err != nil {
		return err
	}
	return r.writeCert(der, cert)
}

func (r *runner) intermediate(context.Context) error {
	s := &r.f.Spec
	issCert, issRef, err := r.issuer()
	if err != nil {
		return err
	}
	var ref KeyRef
	if s.Key.Existing {
		if ref, err = r.existingKey(); err != nil {
			return err
		}
	}
	tmpl, err := r.caTemplate(s.Certificate, nil, false)
	if err != nil {
		return err
	}
	// Go takes the authority key identifier from the issuer only when the
	// names differ; set it always, for the checks and lints below.
	tmpl.AuthorityKeyId = issCert.SubjectKeyId
	if err := checkIssuerAllows(tmpl, issCert); err != nil {
		return err
	}
	if !s.Key.Existing {
		// Everything that can refuse the certificate runs before the key
		// exists, and the issuer's quorum is gathered first: a refusal or
		// a short quorum leaves no key behind whose label would block the
		// corrected ceremony.
		if err := r.preflight(tmpl, issCert, s.Key.Type, keyTypeOf(issRef.Public)); err != nil {
			return err
		}
		if err := r.activate(s.Issuer.Partition, 1); err != nil {
			return err
		}
		if ref, err = r.generateKey(0); err != nil {
			return err
		}
	}
	return r.certifyByIssuer(tmpl, ref.Public, issCert, issRef, func(cert *x509.Certificate) error {
		if !publicKeysEqual(cert.PublicKey, ref.Public) {
			return errors.New("ceremony: intermediate certificate's key is not the module key")
		}
		r.check("certificate key equals module key %s", ref.ID)
		return nil
	})
}

func (r *runner) crossSign(context.Context) error {
	s := &r.f.Spec
	issCert, issRef, err := r.issuer()
	if err != nil {
		return err
	}
	subject, err := readCertificate(s.Certificate.Certificate)
	if err != nil {
		return err
	}
	if !subject.IsCA {
		return fmt.Errorf("ceremony: %s is not a CA certificate", s.Certificate.Certificate)
	}
	tmpl, err := r.caTemplate(s.Certificate, subject, false)
	if err != nil {
		return err
	}
	// Go takes the authority key identifier from the issuer only when the
	// names differ; a cross-sign between same-named CAs needs it set.
	tmpl.AuthorityKeyId = issCert.SubjectKeyId
	if err := checkIssuerAllows(tmpl, issCert); err != nil {
		return err
	}
	return r.certifyByIssuer(tmpl, subject.PublicKey, issCert, issRef, func(cert *x509.Certificate) error {
		if !bytes.Equal(cert.RawSubject, subject.RawSubject) || !publicKeysEqual(cert.PublicKey, subject.PublicKey) {
			return errors.New("ceremony: cross-signed certificate's subject or key differs from the input")
		}
		r.check("subject and key equal those of %s", s.Certificate.Certificate)
		return nil
	})
}

// certifyByIssuer signs tmpl for pub with the issuer key (one signature of
// the issuer's partition), verifies the result and writes it.
func (r *runner) certifyByIssuer(tmpl *x509.Certificate, pub crypto.PublicKey, issCert *x509.Certificate, issRef KeyRef, extra func(*x509.Certificate) error) error {
	s := &r.f.Spec
	if err := r.activate(s.Issuer.Partition, 1); err != nil {
		return err
	}
	signer, err := r.opts.Keys.Signer(s.Issuer.Partition, issRef.ID)
	if err != nil {
		return fmt.Errorf("ceremony: %w", err)
	}
	der, err := r.lintAndSign(tmpl, issCert, pub, signer, keyTypeOf(issRef.Public))
	if err != nil {
		return err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("ceremony: parse result: %w", err)
	}
	if err := cert.CheckSignatureFrom(issCert); err != nil {
		return fmt.Errorf("ceremony: signature by %s does not verify: %w", issCert.Subject, err)
	}
	r.check("signature by %s verifies", issCert.Subject)
	if err := extra(cert); err != nil {
		return err
	}
	if err := verifyChain(cert, issCert, nil); err != nil {
		return err
	}
	r.check("chains to %s", issCert.Subject)
	if err := r.syncAudit(signer); err != nil {
		return err
	}
	return r.writeCert(der, cert)
}

// writeCert writes the certificate and, if asked for, its public key.
func (r *runner) writeCert(der []byte, cert *x509.Certificate) error {
	path := r.f.Spec.Outputs.Certificate
	outs := []output{{path: path, blockType: "CERTIFICATE", der: der, record: r.outputRecord("certificate", path, der, cert)}}
	if pk := r.f.Spec.Outputs.PublicKey; pk != "" {
		spki, err := x509.MarshalPKIXPublicKey(cert.PublicKey)
		if err != nil {
			return fmt.Errorf("ceremony: %w", err)
		}
		outs = append(outs, output{path: pk, blockType: "PUBLIC KEY", der: spki, record: r.outputRecord("public key", pk, spki, nil)})
	}
	return r.write(outs...)
}

// checkIssuerAllows refuses, before any key is generated or anything is
// signed, a CA certificate that its issuer may not sign: one that would
// outlive the issuer, or one whose path length the issuer's basic
// constraints do not leave room for (RFC 5280 §4.2.1.9: pathLenConstraint
// is the number of CA certificates that may follow the issuer in a path,
// so a CA under it must allow fewer; path building refuses the result
// otherwise, which checking the two certificates alone does not show).
func checkIssuerAllows(tmpl, iss *x509.Certificate) error {
	if tmpl.NotAfter.After(iss.NotAfter) {
		return fmt.Errorf("ceremony: certificate would outlive its issuer (issuer expires %s)", iss.NotAfter.UTC().Format(time.RFC3339))
	}
	issLen, want := pathLen(iss), pathLen(tmpl)
	switch {
	case issLen == 0:
		return fmt.Errorf("ceremony: issuer %s has path length 0, so it may not certify another CA (this certificate's path length would be %s)", iss.Subject, pathLenString(want))
	case issLen > 0 && (want < 0 || want >= issLen):
		return fmt.Errorf("ceremony: certificate.path_length %s is not below the issuer's path length %d (%s); set certificate.path_length to %d or less", pathLenString(want), issLen, iss.Subject, issLen-1)
	}
	return nil
}

// pathLen is c's basic constraints path length, -1 for none.
func pathLen(c *x509.Certificate) int {
	if c.MaxPathLen == 0 && !c.MaxPathLenZero {
		return -1
	}
	return c.MaxPathLen
}

func pathLenString(n int) string {
	if n < 0 {
		return "none (unlimited)"
	}
	return strconv.Itoa(n)
}

// caTemplate builds a CA certificate template from cs. For cross-sign, from
// supplies the subject, the subject key identifier and, unless cs sets
// one, the path length: the cross-signed CA keeps the depth of hierarchy
// it had, so that its own intermediates chain through the cross
// certificate too.
func (r *runner) caTemplate(cs CertSpec, from *x509.Certificate, isRoot bool) (*x509.Certificate, error) {
	serial, err := r.serial()
	if err != nil {
		return nil, err
	}
	validity, _ := parseValidity(cs.Validity)
	notBefore := r.clock().UTC().Truncate(time.Second)
	if cs.NotBefore != "" {
		notBefore, _ = time.Parse(time.RFC3339, cs.NotBefore)
	}
	t := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             notBefore,
		NotAfter:              notBefore.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		CRLDistributionPoints: cs.CRLURLs,
		IssuingCertificateURL: cs.IssuerURLs,
		OCSPServer:            cs.OCSPURLs,
	}
	if from != nil {
		t.RawSubject = from.RawSubject
		t.SubjectKeyId = from.SubjectKeyId
	} else {
		t.Subject = pkix.Name{
			CommonName:         cs.Subject.CommonName,
			Organization:       cs.Subject.Organization,
			OrganizationalUnit: cs.Subject.OrganizationalUnit,
			Country:            cs.Subject.Country,
			Province:           cs.Subject.Province,
			Locality:           cs.Subject.Locality,
		}
	}
	switch {
	case cs.PathLength != nil:
		t.MaxPathLen = *cs.PathLength
		t.MaxPathLenZero = *cs.PathLength == 0
	case from != nil:
		t.MaxPathLen = pathLen(from)
		t.MaxPathLenZero = t.MaxPathLen == 0
	case isRoot:
		t.MaxPathLen = -1
	default:
		t.MaxPathLen = 0
		t.MaxPathLenZero = true
	}
	for _, e := range cs.ExtKeyUsages {
		t.ExtKeyUsage = append(t.ExtKeyUsage, extKeyUsages[e])
	}
	for _, p := range cs.Policies {
		oid, _ := parseOID(p)
		t.Policies = append(t.Policies, oid)
	}
	nc := cs.NameConstraints
	// RFC 5280 §4.2.1.10: conforming CAs MUST mark name constraints
	// critical; an explicit false is left to the lints to refuse.
	t.PermittedDNSDomainsCritical = nc.Critical == nil || *nc.Critical
	t.PermittedDNSDomains = nc.PermittedDNS
	t.ExcludedDNSDomains = nc.ExcludedDNS
	t.PermittedEmailAddresses = nc.PermittedEmail
	t.ExcludedEmailAddresses = nc.ExcludedEmail
	for _, c := range nc.PermittedIP {
		n, _ := parseCIDR(c)
		t.PermittedIPRanges = append(t.PermittedIPRanges, n)
	}
	for _, c := range nc.ExcludedIP {
		n, _ := parseCIDR(c)
		t.ExcludedIPRanges = append(t.ExcludedIPRanges, n)
	}
	return t, nil
}

// verifyChain checks that cert chains to root with crypto/x509's own path
// building (any key usage: CA certificates may carry none).
func verifyChain(cert, issuer *x509.Certificate, intermediates []*x509.Certificate) error {
	roots := x509.NewCertPool()
	roots.AddCert(issuer)
	inter := x509.NewCertPool()
	for _, c := range intermediates {
		inter.AddCert(c)
	}
	_, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: cert.NotBefore.Add(time.Second), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return fmt.Errorf("ceremony: result does not chain to %s: %w", issuer.Subject, err)
	}
	return nil
}

// readCertificate reads the first certificate of a PEM file.
func readCertificate(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ceremony: %w", err)
	}
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, fmt.Errorf("ceremony: %s holds no PEM certificate", path)
		}
		if blk.Type == "CERTIFICATE" {
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("ceremony: %s: %w", path, err)
			}
			return c, nil
		}
	}
}
