package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
	"math/big"
	"time"
)

// GenerateCRL makes, lints, signs (through the issuer's signer) and stores a new
// RFC 5280 v2 CRL for issuer ("" means the default issuer) and returns its
// DER. It lists every revoked serial of the issuer, pending records
// included, until the certificate expires (RFC 5280 §3.3 lets a CA drop
// expired entries). The CRL number comes from the store and only grows; it
// carries the authority key identifier of the issuer (x509 adds it) and a
// next update CRL.Validity after this update. A sealed key returns an error
// wrapping ErrSealed and leaves the previous CRL in place.
func (c *CA) GenerateCRL(ctx context.Context, issuer string) ([]byte, error) {
	iss, err := c.issuer(issuer)
	if err != nil {
		return nil, err
	}
	entries, err := c.store.RevokedSerials(ctx, iss.Name)
	if err != nil {
		return nil, fmt.Errorf("ca: crl %s: list revoked: %w", iss.Name, err)
	}
	now := c.clock().UTC().Truncate(time.Second)
	validity := c.cfg.CRL.Validity.D()
	if validity == 0 {
		validity = 7 * 24 * time.Hour
	}
	back := c.cfg.CRL.Backdate.D()
	if back == 0 {
		back = time.Hour
	}
	tmpl := &x509.RevocationList{
		ThisUpdate:                now.Add(-back),
		NextUpdate:                now.Add(validity),
		RevokedCertificateEntries: make([]x509.RevocationListEntry, 0, len(entries)),
	}
	for _, e := range entries {
		if !e.NotAfter.IsZero() && e.NotAfter.Before(now) {
			continue
		}
		n, ok := new(big.Int).SetString(e.Serial, 16)
		if !ok {
			return nil, fmt.Errorf("ca: crl %s: stored serial %q is not hex", iss.Name, e.Serial)
		}
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{
			SerialNumber:   n,
			RevocationTime: e.RevokedAt.UTC(),
			ReasonCode:     e.Reason, // 0 (unspecified) is left out, as RFC 5280 §5.3.1 asks
		})
	}
	// thisUpdate is backdated for clock skew, but never before a
	// revocation the CRL lists (RFC 5280 §5.1.2.4, §5.1.2.6).
	for _, e := range tmpl.RevokedCertificateEntries {
		if e.RevocationTime.After(tmpl.ThisUpdate) {
			tmpl.ThisUpdate = e.RevocationTime
		}
	}
	if tmpl.ThisUpdate.After(now) {
		tmpl.ThisUpdate = now
	}
	num, err := c.store.NextCRLNumber(ctx, iss.Name)
	if err != nil {
		return nil, fmt.Errorf("ca: crl %s: number: %w", iss.Name, err)
	}
	tmpl.Number = new(big.Int).SetUint64(num)

	// Lint-then-sign, as for certificates: the throwaway key signs a copy,
	// zlint's CRL lints check it, and the issuer key signs the identical
	// tbsCertList.
	lintDER, err := x509.CreateRevocationList(nil, tmpl, iss.lintParent, iss.lintKey)
	if err != nil {
		return nil, fmt.Errorf("ca: crl %s: build: %w", iss.Name, err)
	}
	linted, err := x509.ParseRevocationList(lintDER)
	if err != nil {
		return nil, fmt.Errorf("ca: crl %s: parse linted copy: %w", iss.Name, err)
	}
	if res := c.lintCRL(lintDER); len(res) > 0 {
		return nil, &ErrLint{Results: res}
	}
	if k, ok := iss.Signer.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(iss.Cert.PublicKey) {
		return nil, fmt.Errorf("ca: issuer %s: signer public key no longer matches the issuer certificate", iss.Name)
	}
	// x509 verifies the returned signature against Signer.Public(), the
	// issuer key (checked above).
	der, err := x509.CreateRevocationList(nil, tmpl, iss.Cert, iss.Signer)
	if err != nil {
		return nil, wrapSign("crl "+iss.Name, err)
	}
	final, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("ca: crl %s: parse signed CRL: %w", iss.Name, err)
	}
	if !bytes.Equal(final.RawTBSRevocationList, linted.RawTBSRevocationList) {
		return nil, fmt.Errorf("ca: crl %s: signed CRL differs from the linted one; refusing it", iss.Name)
	}
	if err := c.store.SaveCRL(ctx, iss.Name, num, der); err != nil {
		return nil, fmt.Errorf("ca: crl %s: store: %w", iss.Name, err)
	}
	c.log.Info("ca: CRL generated", "issuer", iss.Name, "number", num, "entries", len(tmpl.RevokedCertificateEntries))
	return der, nil
}

// LatestCRL returns the last CRL GenerateCRL stored for issuer ("" means
// the default issuer), or ErrNoCRL. It needs no signature, so it works
// while the key is sealed.
func (c *CA) LatestCRL(ctx context.Context, issuer string) ([]byte, error) {
	iss, err := c.issuer(issuer)
	if err != nil {
		return nil, err
	}
	der, err := c.store.LatestCRL(ctx, iss.Name)
	if err != nil {
		return nil, fmt.Errorf("ca: crl %s: %w", iss.Name, err)
	}
	return der, nil
}
