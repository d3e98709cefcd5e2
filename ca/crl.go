package ca

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// GenerateCRL makes, lints, signs (through the issuer's signer) and stores a new
// RFC 5280 v2 CRL for issuer ("" means the default issuer) and returns its
// DER. It lists every revoked serial of the issuer, pending records
// included. An entry stays after its certificate expires until it has
// been on one CRL made after the expiry (RFC 5280 §3.3): it is left out
// only once both the previous CRL's thisUpdate and now are past the
// certificate's notAfter and that thisUpdate is not before its
// revocation. The CRL number comes from the store and only grows, and
// thisUpdate never goes back from one CRL to the next; the CRL carries
// the authority key identifier of the issuer (x509 adds it) and a next
// update CRL.Validity after this update. A sealed key returns
// an error wrapping ErrSealed and leaves the previous CRL in place.
func (c *CA) GenerateCRL(ctx context.Context, issuer string) ([]byte, error) {
	iss, err := c.issuer(issuer)
	if err != nil {
		return nil, err
	}
	// One generation at a time: the revoked list it reads, its thisUpdate
	// and its number then go up together.
	c.crlMu.Lock()
	defer c.crlMu.Unlock()
	entries, err := c.store.RevokedSerials(ctx, iss.Name)
	if err != nil {
		return nil, fmt.Errorf("ca: crl %s: list revoked: %w", iss.Name, err)
	}
	prev, err := c.previousCRLThisUpdate(ctx, iss.Name)
	if err != nil {
		return nil, err
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
		if !e.NotAfter.IsZero() && e.NotAfter.Before(prev) && !prev.After(now) && !e.RevokedAt.After(prev) {
			// Revoked by the previous CRL's thisUpdate (which is never
			// later than when that CRL read the revoked list), so on it,
			// and that CRL was made after the certificate expired. A
			// previous thisUpdate later than now proves nothing: that CRL
			// was made while the clock ran ahead, and the entry must
			// still appear on one CRL made after the real expiry (so
			// also never leaves while the certificate is valid).
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
	// Nor before the previous CRL's (whose thisUpdate may have been a
	// revocation time that is no longer listed), unless the clock went
	// back: a thisUpdate in the future would be worse.
	if prev.After(tmpl.ThisUpdate) {
		tmpl.ThisUpdate = prev
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
	// zlint's CRL lints check it, and the issuer key signs exactly its
	// tbsCertList (not a second CreateRevocationList run).
	lintDER, tbs, err := buildLintCRL(tmpl, iss)
	if err != nil {
		return nil, fmt.Errorf("ca: crl %s: build: %w", iss.Name, err)
	}
	if res := c.lintCRL(lintDER); len(res) > 0 {
		return nil, &ErrLint{Results: res}
	}
	sig, err := iss.signTBS(tbs, "crl "+iss.Name)
	if err != nil {
		return nil, err
	}
	der, err := assembleCertificate(tbs, iss.sigAlgDER, sig)
	if err != nil {
		return nil, err
	}
	if _, err := x509.ParseRevocationList(der); err != nil {
		return nil, fmt.Errorf("ca: crl %s: parse signed CRL: %w", iss.Name, err)
	}
	if err := iss.syncAudit(); err != nil {
		return nil, unauditedErr(fmt.Sprintf("CRL %d of %s", num, iss.Name), err)
	}
	if err := c.store.SaveCRL(ctx, iss.Name, num, der); err != nil {
		return nil, fmt.Errorf("ca: crl %s: store: %w", iss.Name, err)
	}
	c.log.Info("ca: CRL generated", "issuer", iss.Name, "number", num, "entries", len(tmpl.RevokedCertificateEntries))
	return der, nil
}

// previousCRLThisUpdate returns the thisUpdate of the last CRL stored for
// issuer, or the zero time if there is none. It reads only the CRL's
// header, not its entries.
func (c *CA) previousCRLThisUpdate(ctx context.Context, issuer string) (time.Time, error) {
	der, err := c.store.LatestCRL(ctx, issuer)
	switch {
	case errors.Is(err, ErrNoCRL):
		return time.Time{}, nil
	case err != nil:
		return time.Time{}, fmt.Errorf("ca: crl %s: previous CRL: %w", issuer, err)
	}
	t, err := crlThisUpdate(der)
	if err != nil {
		return time.Time{}, fmt.Errorf("ca: crl %s: previous CRL: %w", issuer, err)
	}
	return t, nil
}

// crlThisUpdate reads the thisUpdate field of a DER CertificateList
// (RFC 5280 §5.1) without parsing its revoked certificates.
func crlThisUpdate(der []byte) (time.Time, error) {
	s := cryptobyte.String(der)
	var list, tbs cryptobyte.String
	if !s.ReadASN1(&list, cbasn1.SEQUENCE) || !list.ReadASN1(&tbs, cbasn1.SEQUENCE) ||
		!tbs.SkipOptionalASN1(cbasn1.INTEGER) || // version
		!tbs.SkipASN1(cbasn1.SEQUENCE) || // signature
		!tbs.SkipASN1(cbasn1.SEQUENCE) { // issuer
		return time.Time{}, errors.New("malformed CRL")
	}
	var t time.Time
	switch {
	case tbs.PeekASN1Tag(cbasn1.UTCTime):
		if !tbs.ReadASN1UTCTime(&t) {
			return time.Time{}, errors.New("malformed CRL thisUpdate")
		}
	case tbs.PeekASN1Tag(cbasn1.GeneralizedTime):
		if !tbs.ReadASN1GeneralizedTime(&t) {
			return time.Time{}, errors.New("malformed CRL thisUpdate")
		}
	default:
		return time.Time{}, errors.New("malformed CRL thisUpdate")
	}
	return t.UTC(), nil
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

// buildLintCRL returns the DER of tmpl signed by the issuer's throwaway key
// and its tbsCertList, which the issuer key is to sign. As for
// certificates (buildLintCopy), tbsCapture stops x509 before it checks
// the throwaway signature.
func buildLintCRL(tmpl *x509.RevocationList, iss *issuerState) (lintDER, tbs []byte, err error) {
	capture := &tbsCapture{key: iss.lintKey}
	der, err := x509.CreateRevocationList(nil, tmpl, iss.lintParent, capture)
	switch {
	case err == nil:
		lintDER = der // crypto/x509 did not use SignMessage
	case !errors.Is(err, errTBSCaptured) || capture.tbs == nil:
		return nil, nil, err
	default:
		if lintDER, err = assembleCertificate(capture.tbs, iss.sigAlgDER, capture.sig); err != nil {
			return nil, nil, err
		}
	}
	// Parsing checks the copy's structure, including that its signature
	// algorithm inside and outside the tbsCertList agree.
	linted, err := x509.ParseRevocationList(lintDER)
	if err != nil {
		return nil, nil, fmt.Errorf("parse linted copy: %w", err)
	}
	if capture.tbs != nil && !bytes.Equal(linted.RawTBSRevocationList, capture.tbs) {
		return nil, nil, errors.New("linted copy's tbsCertList does not round-trip; refusing it")
	}
	return lintDER, linted.RawTBSRevocationList, nil
}
