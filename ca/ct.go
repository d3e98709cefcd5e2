package ca

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"net"
	"slices"
)

// RFC 6962 §3.1 and §3.3 extension OIDs.
var (
	oidCTPoison  = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 11129, 2, 4, 3}
	oidSCTList   = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 11129, 2, 4, 2}
	asn1NULL     = []byte{0x05, 0x00}
	maxSCTLength = 1<<16 - 1
)

// IssueSignatures is how many signatures of the issuer key one issuance
// under profile takes: two with Certificate Transparency (the
// precertificate, then the final certificate; RFC 6962 §3.1), else one.
// A per-operation partition must be activated for that many.
func (c *CA) IssueSignatures(profile string) (int, error) {
	prof, ok := c.profiles[profile]
	if !ok {
		return 0, fmt.Errorf("%w %q", ErrUnknownProfile, profile)
	}
	if prof.p.CT.Mode != CTOff {
		return 2, nil
	}
	return 1, nil
}

// issueWithCT issues through an RFC 6962 precertificate: lint, record and
// sign the precertificate, get SCTs for it, then lint and sign the final
// certificate, which is the same TBSCertificate with the poison extension
// replaced by the SCT list.
func (c *CA) issueWithCT(ctx context.Context, prof *profileState, iss *issuerState, tmpl *x509.Certificate, csr *x509.CertificateRequest, ids identifiers) (*Certificate, error) {
	pre := *tmpl
	pre.ExtraExtensions = []pkix.Extension{{Id: oidCTPoison, Critical: true, Value: asn1NULL}}
	var lintedPre *lintedCert
	var err error
	for attempt := 0; ; attempt++ {
		if pre.SerialNumber, err = c.newSerial(); err != nil {
			return nil, err
		}
		if lintedPre, err = c.lintCopy(prof, iss, &pre, csr, ids); err != nil {
			return nil, err
		}
		err = c.store.ReserveSerial(ctx, c.pendingRecord(prof, iss, lintedPre.z.SerialNumber, lintedPre.der, lintedPre.z.NotBefore, lintedPre.z.NotAfter, ids, true))
		if err == nil {
			break
		}
		if !errors.Is(err, ErrSerialExists) || attempt == 2 {
			return nil, fmt.Errorf("ca: record serial: %w", err)
		}
	}
	serial := SerialString(pre.SerialNumber)
	c.log.Info("ca: precertificate serial recorded", "serial", serial, "issuer", iss.Name, "profile", prof.name)
	precert, err := c.signFinal(iss, lintedPre)
	if err != nil {
		return nil, err
	}
	// The precertificate leaves the CA with the submission: its
	// signature's audit record must be durable first.
	if err := iss.syncAudit(); err != nil {
		return nil, unauditedErr("precertificate "+serial, err)
	}

	sctCtx, cancel := context.WithTimeout(ctx, prof.p.CT.Deadline.D())
	scts, sctErr := c.scts.GetSCTs(sctCtx, append([][]byte{precert}, iss.chainDER...))
	cancel()
	if need := prof.p.CT.MinSCTs; sctErr == nil && len(scts) < need {
		sctErr = fmt.Errorf("profile %s needs %d SCTs, got %d", prof.name, need, len(scts))
	}
	var failures []string
	if sctErr != nil {
		if prof.p.CT.Mode == CTEmbed {
			c.log.Warn("ca: SCT policy not met; precertificate on record", "serial", serial, "err", sctErr)
			return nil, &ErrCT{Serial: serial, Err: sctErr}
		}
		failures = []string{sctErr.Error()}
	}

	final := *tmpl
	final.SerialNumber = pre.SerialNumber
	if len(scts) > 0 {
		ext, err := sctListExtension(scts)
		if err != nil {
			return nil, fmt.Errorf("ca: serial %s: %w", serial, err)
		}
		final.ExtraExtensions = []pkix.Extension{ext}
	}
	lintedFinal, err := c.lintCopy(prof, iss, &final, csr, ids)
	if err != nil {
		return nil, err
	}
	// lintedPre carries the signed precertificate's TBSCertificate.
	preCert, err := x509.ParseCertificate(lintedPre.der)
	if err != nil {
		return nil, fmt.Errorf("ca: parse precertificate: %w", err)
	}
	finalCert, err := x509.ParseCertificate(lintedFinal.der)
	if err != nil {
		return nil, fmt.Errorf("ca: parse linted certificate: %w", err)
	}
	if err := precertCorresponds(preCert, finalCert); err != nil {
		return nil, err
	}
	cert, err := c.signFinal(iss, lintedFinal)
	if err != nil {
		return nil, err
	}
	if err := iss.syncAudit(); err != nil {
		return nil, unauditedErr("certificate "+serial, err)
	}
	if err := c.store.StoreIssued(context.WithoutCancel(ctx), serial, cert, failures); err != nil {
		return nil, fmt.Errorf("ca: store issued certificate %s: %w", serial, err)
	}
	c.log.Info("ca: certificate issued", "serial", serial, "issuer", iss.Name, "profile", prof.name, "scts", len(scts))
	return c.certFromParts(serial, cert, lintedFinal, iss, prof.name, ids, StatusValid, failures), nil
}

// sctListExtension encodes the RFC 6962 §3.3 SignedCertificateTimestampList
// (TLS encoding: a 2-byte length, then each SCT with its own 2-byte length)
// wrapped in an OCTET STRING.
func sctListExtension(scts [][]byte) (pkix.Extension, error) {
	var body []byte
	for _, s := range scts {
		if len(s) == 0 || len(s) > maxSCTLength {
			return pkix.Extension{}, fmt.Errorf("SCT of %d bytes cannot be encoded", len(s))
		}
		body = append(body, byte(len(s)>>8), byte(len(s)))
		body = append(body, s...)
	}
	if len(body) > maxSCTLength {
		return pkix.Extension{}, fmt.Errorf("SCT list of %d bytes is too long", len(body))
	}
	list := append([]byte{byte(len(body) >> 8), byte(len(body))}, body...)
	val, err := asn1.Marshal(list)
	if err != nil {
		return pkix.Extension{}, err
	}
	return pkix.Extension{Id: oidSCTList, Value: val}, nil
}

// precertCorresponds checks that the final certificate is the
// precertificate's (RFC 6962 §3.1): same serial, issuer, subject, key,
// validity, names and extensions except poison and SCT list.
func precertCorresponds(pre, final *x509.Certificate) error {
	bad := func(what string) error {
		return fmt.Errorf("ca: final certificate does not correspond to the precertificate: %s differs", what)
	}
	switch {
	case pre.SerialNumber.Cmp(final.SerialNumber) != 0:
		return bad("serial")
	case string(pre.RawIssuer) != string(final.RawIssuer):
		return bad("issuer")
	case string(pre.RawSubject) != string(final.RawSubject):
		return bad("subject")
	case string(pre.RawSubjectPublicKeyInfo) != string(final.RawSubjectPublicKeyInfo):
		return bad("public key")
	case !pre.NotBefore.Equal(final.NotBefore) || !pre.NotAfter.Equal(final.NotAfter):
		return bad("validity")
	case !slices.Equal(pre.DNSNames, final.DNSNames) || !slices.Equal(pre.EmailAddresses, final.EmailAddresses):
		return bad("names")
	case !slices.EqualFunc(pre.IPAddresses, final.IPAddresses, net.IP.Equal):
		return bad("IP addresses")
	}
	strip := func(c *x509.Certificate) []pkix.Extension {
		var out []pkix.Extension
		for _, e := range c.Extensions {
			if !e.Id.Equal(oidCTPoison) && !e.Id.Equal(oidSCTList) {
				out = append(out, e)
			}
		}
		return out
	}
	pe, fe := strip(pre), strip(final)
	if !slices.EqualFunc(pe, fe, func(a, b pkix.Extension) bool {
		return a.Id.Equal(b.Id) && a.Critical == b.Critical && string(a.Value) == string(b.Value)
	}) {
		return bad("extensions")
	}
	return nil
}
