package ceremony

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"strings"
	"time"

	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
)

// crl signs a CRL for the issuer with one signature of its partition.
func (r *runner) crl(context.Context) error {
	s := &r.f.Spec
	issCert, issRef, err := r.issuer()
	if err != nil {
		return err
	}
	if s.CRL.Previous != "" {
		prev, err := readCRL(s.CRL.Previous)
		if err != nil {
			return err
		}
		if err := prev.CheckSignatureFrom(issCert); err != nil {
			return fmt.Errorf("ceremony: previous CRL %s is not signed by this issuer: %w", s.CRL.Previous, err)
		}
		if prev.Number != nil && big.NewInt(s.CRL.Number).Cmp(prev.Number) <= 0 {
			return fmt.Errorf("ceremony: crl.number %d does not grow (previous CRL %s has number %s)", s.CRL.Number, s.CRL.Previous, prev.Number)
		}
		r.check("CRL number %d is greater than the previous CRL's %s", s.CRL.Number, prev.Number)
	}
	now := r.clock().UTC().Truncate(time.Second)
	validity, _ := parseValidity(s.CRL.Validity)
	tmpl := &x509.RevocationList{
		Number:     big.NewInt(s.CRL.Number),
		ThisUpdate: now,
		NextUpdate: now.Add(validity),
	}
	if !s.CRL.CoversLeafCertificates {
		tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, onlyCACertsIDP)
	}
	for _, rv := range s.CRL.Revoked {
		hexSerial, _ := parseSerial(rv.Serial)
		n, ok := new(big.Int).SetString(hexSerial, 16)
		if !ok {
			return fmt.Errorf("ceremony: bad serial %q", rv.Serial)
		}
		e := x509.RevocationListEntry{SerialNumber: n, RevocationTime: now}
		if rv.RevokedAt != "" {
			e.RevocationTime, _ = time.Parse(time.RFC3339, rv.RevokedAt)
		}
		if rv.Reason != "" {
			e.ReasonCode, _ = parseReason(rv.Reason)
		}
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, e)
	}

	// Lint a copy signed by a throwaway key of the issuer's type first.
	throwaway, err := throwawayKey(keyTypeOf(issRef.Public))
	if err != nil {
		return err
	}
	lintIssuer := *issCert
	lintIssuer.PublicKey = throwaway.Public()
	lintDER, err := x509.CreateRevocationList(r.rand, tmpl, &lintIssuer, throwaway)
	if err != nil {
		return fmt.Errorf("ceremony: build CRL: %w", err)
	}
	zl, err := zx509.ParseRevocationList(lintDER)
	if err != nil {
		return fmt.Errorf("ceremony: lint parse CRL: %w", err)
	}
	reg, err := lintRegistry()
	if !s.CRL.CoversLeafCertificates {
		reg, err = caCRLRegistry()
	}
	if err != nil {
		return err
	}
	errs, warns := lintFindings(zlint.LintRevocationListEx(zl, reg), reg)
	if len(errs) > 0 {
		return fmt.Errorf("ceremony: CRL refused by lint before any module signature: %s", strings.Join(errs, "; "))
	}
	r.check("CRL lint clean before signing (warnings: %s)", orNone(warns))

	if err := r.activate(s.Issuer.Partition, 1); err != nil {
		return err
	}
	signer, err := r.opts.Keys.Signer(s.Issuer.Partition, issRef.ID)
	if err != nil {
		return fmt.Errorf("ceremony: %w", err)
	}
	r.progress("signing the CRL with the module key")
	der, err := x509.CreateRevocationList(r.rand, tmpl, issCert, signer)
	if err != nil {
		return fmt.Errorf("ceremony: module signature: %w", err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return fmt.Errorf("ceremony: parse signed CRL: %w", err)
	}
	a, _ := x509.ParseRevocationList(lintDER)
	if string(a.RawTBSRevocationList) != string(crl.RawTBSRevocationList) {
		return fmt.Errorf("ceremony: signed CRL differs from the linted one")
	}
	if err := crl.CheckSignatureFrom(issCert); err != nil {
		return fmt.Errorf("ceremony: CRL signature does not verify: %w", err)
	}
	r.check("CRL signature by %s verifies; %d entries; number %s", issCert.Subject, len(crl.RevokedCertificateEntries), crl.Number)
	if err := r.syncAudit(signer); err != nil {
		return err
	}
	out := s.Outputs.CRL
	rec := r.outputRecord("crl", out, der, nil)
	rec.Subject, rec.Serial, rec.NotBefore, rec.NotAfter = issCert.Subject.String(), "number "+crl.Number.String(), crl.ThisUpdate, crl.NextUpdate
	return r.write(output{path: out, blockType: "X509 CRL", der: der, record: rec})
}

func readCRL(path string) (*x509.RevocationList, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ceremony: %w", err)
	}
	if blk, _ := pem.Decode(b); blk != nil {
		b = blk.Bytes
	}
	crl, err := x509.ParseRevocationList(b)
	if err != nil {
		return nil, fmt.Errorf("ceremony: %s: %w", path, err)
	}
	return crl, nil
}

// onlyCACertsIDP is a critical issuing distribution point extension
// (2.5.29.28) with only onlyContainsCACerts set: SEQUENCE { [2] TRUE }.
var onlyCACertsIDP = pkix.Extension{
	Id:       asn1.ObjectIdentifier{2, 5, 29, 28},
	Critical: true,
	Value:    []byte{0x30, 0x03, 0x82, 0x01, 0xff},
}
