package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"runtime"
	"strings"
	"time"

	zx509 "github.com/zmap/zcrypto/x509"
)

// IssueRequest asks for one certificate.
type IssueRequest struct {
	// CSR is a DER PKCS #10 request; ParsedCSR may be given instead.
	CSR       []byte
	ParsedCSR *x509.CertificateRequest
	// Profile names the profile (required).
	Profile string
	// Issuer names the issuer; empty means the default issuer.
	Issuer string
	// NotBefore and NotAfter choose the validity window; only for a profile
	// with AllowNotBeforeNotAfter. Zero means the profile's default.
	NotBefore time.Time
	NotAfter  time.Time
	// Names, if set, are the identifiers the certificate must carry (DNS
	// names and IP addresses, e.g. an ACME order's identifiers): the CSR's
	// DNS and IP names (and its CN, if it is a name) must be exactly this
	// set.
	Names []string
}

// Certificate is an issued (or pending) certificate as callers see it.
type Certificate struct {
	Serial string // lower-case hex
	// DER is the final certificate; nil for a pending record (the linted
	// copy or precertificate on record is never handed out).
	DER []byte
	// Chain is the issuer chain: the issuer certificate, then up to the
	// root. Shared: callers must not modify it.
	Chain      [][]byte
	Issuer     string
	Profile    string
	NotBefore  time.Time
	NotAfter   time.Time
	Names      []string
	Status     Status
	RevokedAt  time.Time
	Reason     int
	CTFailures []string
}

// Issue issues a certificate for req, lint-then-sign (see the package
// comment). Errors: ErrUnknownProfile, ErrUnknownIssuer, *ErrBadCSR,
// *ErrPolicy, ErrBadRequest, *ErrLint (no real signature was made),
// ErrSealed (wrapped), *ErrCT.
//
// The CSR's signature (proof of possession) is checked on another
// goroutine while the certificate is built and linted; its verdict is in
// before the serial is recorded, and a bad signature is reported in
// preference to any other error, as if it had been checked first.
func (c *CA) Issue(ctx context.Context, req IssueRequest) (*Certificate, error) {
	csr := req.ParsedCSR
	if csr == nil {
		if len(req.CSR) == 0 {
			return nil, &ErrBadCSR{Rule: "empty CSR"}
		}
		var err error
		if csr, err = x509.ParseCertificateRequest(req.CSR); err != nil {
			return nil, &ErrBadCSR{Rule: "malformed CSR", Err: err}
		}
	}
	sigOK := make(chan error, 1)
	go func() { sigOK <- checkCSRSignature(csr) }()
	cert, err := c.issue(ctx, req, csr, sigOK)
	if err != nil {
		// issue waits for the verdict only once it needs it.
		if sigErr := <-sigOK; sigErr != nil {
			return nil, sigErr
		}
	}
	return cert, err
}

// IssueVerified is Issue for a caller that has already parsed the CSR and
// checked its signature (x509.CertificateRequest.CheckSignature), as the
// ACME finalize handler does: req.ParsedCSR is required and its signature
// is not checked again. Every other check of Issue applies.
func (c *CA) IssueVerified(ctx context.Context, req IssueRequest) (*Certificate, error) {
	if req.ParsedCSR == nil {
		return nil, &ErrBadCSR{Rule: "empty CSR"}
	}
	sigOK := make(chan error, 1)
	sigOK <- nil
	return c.issue(ctx, req, req.ParsedCSR, sigOK)
}

// issue is Issue once the CSR is parsed; sigOK delivers the verdict on its
// signature (once), which issue receives before recording a serial.
func (c *CA) issue(ctx context.Context, req IssueRequest, csr *x509.CertificateRequest, sigOK chan error) (*Certificate, error) {
	c.inflight.Add(1)
	defer c.inflight.Add(-1)
	prof, ok := c.profiles[req.Profile]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownProfile, req.Profile)
	}
	iss, err := c.issuer(req.Issuer)
	if err != nil {
		return nil, err
	}
	ids, err := prof.checkCSR(csr)
	if err != nil {
		return nil, err
	}
	if len(req.Names) > 0 {
		if err := ids.matchNames(req.Names); err != nil {
			return nil, err
		}
	}
	if err := c.checkPolicy(prof, ids); err != nil {
		return nil, err
	}
	nb, na, err := c.validity(prof, iss, req.NotBefore, req.NotAfter)
	if err != nil {
		return nil, err
	}
	tmpl := c.template(prof, iss, csr, ids, nb, na)

	if prof.p.CT.Mode != CTOff {
		if err := awaitSignature(sigOK); err != nil {
			return nil, err
		}
		return c.issueWithCT(ctx, prof, iss, tmpl, csr, ids)
	}

	linted, err := c.lintAndReserve(ctx, prof, iss, tmpl, csr, ids, sigOK, c.overlapRecord(c.inflight.Load()))
	if err != nil {
		return nil, err
	}
	serial := SerialString(tmpl.SerialNumber)
	c.log.Info("ca: serial recorded", "serial", serial, "issuer", iss.Name, "profile", prof.name)

	// From here on a real signature may exist: a cancelled request must
	// not keep the signed certificate out of the store.
	final, err := c.signFinal(iss, linted)
	if err != nil {
		c.log.Warn("ca: signing failed; pending record kept", "serial", serial, "err", err)
		return nil, err
	}
	if err := iss.syncAudit(); err != nil {
		return nil, unauditedErr("certificate "+serial, err)
	}
	if err := c.store.StoreIssued(context.WithoutCancel(ctx), serial, final, nil); err != nil {
		return nil, fmt.Errorf("ca: store issued certificate %s: %w", serial, err)
	}
	c.log.Info("ca: certificate issued", "serial", serial, "issuer", iss.Name, "profile", prof.name)
	return c.certFromParts(serial, final, linted, iss, prof.name, ids, StatusValid, nil), nil
}

// AuditSyncer is implemented by issuer signers whose module records each
// signature in an audit log that it syncs in the background (hsm's
// AuditSyncer; ca does not import hsm). SyncAudit returns once the records
// of every signature the module has released are durable, or an error if
// the log failed first. A wrapper around such a signer must forward it.
type AuditSyncer interface {
	SyncAudit() error
}

// syncAudit makes the audit records of the issuer key's signatures
// durable (AuditSyncer) before the caller stores or hands out what the
// last one signed. A module syncs its audit log in the background every
// few tens of milliseconds; without this a power loss right after a
// certificate (or CRL) was stored could keep it and lose the record of its
// signature, so that the module's log would not account for a certificate
// the CA holds. It runs before the store's own write, not beside it: a
// store commit that finished first would leave exactly that window, and a
// failed sync must leave nothing stored as issued (the pending record
// stays; the certificate is never handed out). A signer that is not a
// module's (tests, a plain key) has nothing to sync.
func (iss *issuerState) syncAudit() error { return SyncAudit(iss.Signer) }

// SyncAudit calls s.SyncAudit if s is an AuditSyncer; a signer without an
// audit log has nothing to sync. Wrappers around issuer keys forward
// their AuditSyncer through it.
func SyncAudit(s crypto.Signer) error {
	if a, ok := s.(AuditSyncer); ok {
		return a.SyncAudit()
	}
	return nil
}

// unauditedErr is the error for an object whose signature's audit record
// could not be made durable: the module's audit log failed, and what was
// signed is neither stored as issued nor handed out.
func unauditedErr(what string, err error) error {
	return fmt.Errorf("ca: %s was signed, but the audit record of its signature could not be made durable, so it is not stored or handed out: %w", what, err)
}

// CheckNames checks DNS names and IP addresses against the name policy of
// the CA and of profile, without a CSR (ACME checks an order's identifiers
// before creating it). It returns ErrUnknownProfile or the first *ErrPolicy.
func (c *CA) CheckNames(profile string, dnsNames []string, ips []net.IP) error {
	prof, ok := c.profiles[profile]
	if !ok {
		return fmt.Errorf("%w %q", ErrUnknownProfile, profile)
	}
	ids := identifiers{}
	for _, n := range dnsNames {
		if !prof.sanTypes["dns"] {
			return &ErrPolicy{Name: n, Reason: fmt.Sprintf("profile %s does not allow DNS names", profile)}
		}
		if err := checkDNSName(n); err != nil {
			return &ErrPolicy{Name: n, Reason: err.Error()}
		}
		ids.dns = append(ids.dns, strings.ToLower(n))
	}
	for _, ip := range ips {
		if !prof.sanTypes["ip"] {
			return &ErrPolicy{Name: ip.String(), Reason: fmt.Sprintf("profile %s does not allow IP addresses", profile)}
		}
		ids.ips = append(ids.ips, ip)
	}
	if n := ids.count(); n > prof.p.MaxSANs {
		return &ErrPolicy{Name: fmt.Sprintf("%d names", n), Reason: fmt.Sprintf("profile %s allows at most %d names", profile, prof.p.MaxSANs)}
	}
	return c.checkPolicy(prof, ids)
}

// validity computes the certificate's window: by default from now -
// Backdate to now + Validity. A requested window (AllowNotBeforeNotAfter)
// is at most Validity long, from the requested notBefore, or from now when
// only notAfter is requested; it may start no earlier than the default
// and must end in the future.
func (c *CA) validity(prof *profileState, iss *issuerState, reqNB, reqNA time.Time) (time.Time, time.Time, error) {
	now := c.clock().UTC().Truncate(time.Second)
	back := prof.p.Backdate.D()
	val := prof.p.Validity.D()
	nb := now.Add(-back)
	na := now.Add(val).Add(-time.Second)
	if !reqNB.IsZero() || !reqNA.IsZero() {
		if !prof.p.AllowNotBeforeNotAfter {
			return time.Time{}, time.Time{}, fmt.Errorf("%w: profile %s does not allow choosing notBefore/notAfter", ErrBadRequest, prof.name)
		}
		// from is where the requested validity is counted from.
		from := now
		if !reqNB.IsZero() {
			nb = reqNB.UTC().Truncate(time.Second)
			if nb.Before(now.Add(-back)) {
				return time.Time{}, time.Time{}, fmt.Errorf("%w: notBefore %s is further in the past than the profile's backdate", ErrBadRequest, nb.Format(time.RFC3339))
			}
			from = nb
			if reqNA.IsZero() {
				na = nb.Add(val).Add(-time.Second)
			}
		}
		if !reqNA.IsZero() {
			na = reqNA.UTC().Truncate(time.Second)
		}
		if !na.After(nb) {
			return time.Time{}, time.Time{}, fmt.Errorf("%w: notAfter is not after notBefore", ErrBadRequest)
		}
		if !na.After(now) {
			return time.Time{}, time.Time{}, fmt.Errorf("%w: requested notAfter %s is in the past (now %s)", ErrBadRequest, na.Format(time.RFC3339), now.Format(time.RFC3339))
		}
		if na.Sub(from) > val {
			return time.Time{}, time.Time{}, fmt.Errorf("%w: requested validity %v (from %s to %s) exceeds the profile's %v", ErrBadRequest, na.Sub(from), from.Format(time.RFC3339), na.Format(time.RFC3339), val)
		}
		if na.After(iss.Cert.NotAfter) {
			return time.Time{}, time.Time{}, fmt.Errorf("%w: notAfter %s is after the issuer's %s", ErrBadRequest, na.Format(time.RFC3339), iss.Cert.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	// A certificate never outlives its issuer (RFC 5280 §6.1.3 would
	// reject it later anyway) nor starts before it.
	if na.After(iss.Cert.NotAfter) {
		na = iss.Cert.NotAfter.UTC()
	}
	if nb.Before(iss.Cert.NotBefore) {
		nb = iss.Cert.NotBefore.UTC()
	}
	if !na.After(now) {
		return time.Time{}, time.Time{}, fmt.Errorf("ca: issuer %s expires at %s; cannot issue", iss.Name, iss.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return nb, na, nil
}

// template builds the certificate template. Only what the CA vouches for
// goes in: the subject is the checked CN alone (if kept), the names are the
// checked identifiers, the extensions come from the profile.
func (c *CA) template(prof *profileState, iss *issuerState, csr *x509.CertificateRequest, ids identifiers, nb, na time.Time) *x509.Certificate {
	t := &x509.Certificate{
		NotBefore:             nb,
		NotAfter:              na,
		BasicConstraintsValid: true,
		IsCA:                  false,
		DNSNames:              ids.dns,
		IPAddresses:           ids.ips,
		EmailAddresses:        ids.emails,
		URIs:                  ids.uris,
		ExtKeyUsage:           prof.extKeyUsages(),
		KeyUsage:              prof.keyUsage(csr.PublicKey),
		// SignatureAlgorithm stays unset: Go picks it from the issuer key
		// (the issuer certificate's own algorithm is its parent's).
	}
	if ids.subjectCN != "" {
		t.Subject = pkix.Name{CommonName: ids.subjectCN}
	}
	if u := c.cfg.URLs.CRLURL(iss.Name); u != "" {
		t.CRLDistributionPoints = []string{u}
	}
	if u := c.cfg.URLs.AIAURL(iss.Name); u != "" {
		t.IssuingCertificateURL = []string{u}
	}
	if c.cfg.URLs.OCSP != "" {
		t.OCSPServer = []string{c.cfg.URLs.OCSP}
	}
	if prof.server {
		// BR 7.1.2.7.9 (certificatePolicies): the reserved domain-validated
		// policy OID identifies a subscriber TLS certificate.
		t.Policies = []x509.OID{oidDomainValidated}
	}
	return t
}

var oidDomainValidated = mustOID("2.23.140.1.2.1")

func mustOID(s string) x509.OID {
	o, err := x509.ParseOID(s)
	if err != nil {
		panic(err)
	}
	return o
}

// newSerial returns a positive serial of 144 random bits plus a fixed
// leading byte, so it always encodes in 19 octets (RFC 5280 §4.1.2.2,
// BR 7.1 asks for at least 64 random bits; we use 144).
func (c *CA) newSerial() (*big.Int, error) {
	b := make([]byte, 19)
	b[0] = 0x01
	c.randMu.Lock()
	_, err := io.ReadFull(c.rand, b[1:])
	c.randMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("ca: serial randomness: %w", err)
	}
	return new(big.Int).SetBytes(b), nil
}

// SerialString formats a serial as CA records name it: lower-case hex
// without leading zeros.
func SerialString(n *big.Int) string { return n.Text(16) }

// ParseSerial accepts a serial in hex, optionally with colons, "0x" or
// upper case, and returns it in SerialString form.
func ParseSerial(s string) (string, error) {
	t := strings.ToLower(strings.TrimPrefix(strings.TrimPrefix(strings.TrimSpace(s), "0x"), "0X"))
	t = strings.ReplaceAll(t, ":", "")
	if t == "" || len(t) > 42 {
		return "", fmt.Errorf("%w: %q is not a hex serial", ErrUnknownSerial, s)
	}
	n, ok := new(big.Int).SetString(t, 16)
	if !ok || n.Sign() <= 0 {
		return "", fmt.Errorf("%w: %q is not a hex serial", ErrUnknownSerial, s)
	}
	return SerialString(n), nil
}

// lintCopy signs tmpl with the issuer's throwaway key and lints the result
// (zlint and hsmca's own checks); csr is the checked request.
func (c *CA) lintCopy(prof *profileState, iss *issuerState, tmpl *x509.Certificate, csr *x509.CertificateRequest, ids identifiers) (*lintedCert, error) {
	cp, err := c.buildCopy(iss, tmpl, csr)
	if err != nil {
		return nil, err
	}
	return c.checkCopy(prof, iss, cp, ids)
}

// unlintedCopy is a copy signed by the throwaway key, not yet linted.
type unlintedCopy struct {
	der, tbs, alg []byte
}

// buildCopy signs tmpl with the issuer's throwaway key; csr is the checked
// request.
func (c *CA) buildCopy(iss *issuerState, tmpl *x509.Certificate, csr *x509.CertificateRequest) (unlintedCopy, error) {
	der, err := buildLintCopy(tmpl, iss.lintParent, csr.PublicKey, iss.lintKey)
	if err != nil {
		return unlintedCopy{}, fmt.Errorf("ca: build certificate: %w", err)
	}
	tbs, alg, err := certificateParts(der)
	if err != nil {
		return unlintedCopy{}, err
	}
	if !bytes.Equal(alg, iss.sigAlgDER) {
		return unlintedCopy{}, fmt.Errorf("ca: issuer %s: linted copy has an unexpected signature algorithm", iss.Name)
	}
	return unlintedCopy{der: der, tbs: tbs, alg: alg}, nil
}

// checkCopy parses the copy (zcrypto) and lints it (zlint and hsmca's own
// checks). Only a copy that passes every check becomes a lintedCert.
func (c *CA) checkCopy(prof *profileState, iss *issuerState, cp unlintedCopy, ids identifiers) (*lintedCert, error) {
	zc, err := zx509.ParseCertificate(cp.der)
	if err != nil {
		return nil, &ErrLint{Results: []LintResult{{Lint: "hsmca_zcrypto_parse", Status: "fatal", Details: err.Error()}}}
	}
	if !bytes.Equal(zc.RawTBSCertificate, cp.tbs) {
		return nil, errors.New("ca: linted copy's TBSCertificate does not round-trip; refusing it")
	}
	if res := c.lint(prof, iss, zc, ids); len(res) > 0 {
		return nil, &ErrLint{Results: res}
	}
	return &lintedCert{der: cp.der, tbs: cp.tbs, sigAlg: cp.alg, z: zc}, nil
}

// errNotReserved stands for a reservation never attempted because the
// CSR's signature failed; it never leaves this package.
var errNotReserved = errors.New("ca: internal: serial not recorded")

// recordWhileLinting reports whether an issuance, one of inflight in
// progress, records its copy while linting it. That pays only when a CPU
// would otherwise sit idle during the record's flush: with at least as
// many issuances in flight as Ps, the others fill the CPUs during the
// flush, and the extra goroutine and its wake-ups cost CPU per
// certificate (measured: about 0.1 ms).
func recordWhileLinting(inflight int32) bool {
	return int(inflight) < runtime.GOMAXPROCS(0)
}

// lintAndReserve picks a serial, builds the copy of tmpl signed by the
// throwaway key, lints it and records it (pending) in the store. It
// returns the linted copy only when both are done: the copy passed every
// lint AND its record is durable. Only then may the issuer key sign
// (DESIGN.md §3: the HSM signs only linted bytes, and only a serial that
// is on record).
//
// With overlap, the record is written while the copy is linted, so that
// its fdatasync runs at the same time as the lints. It is written only
// after the CSR's signature verdict (sigOK) is in, so a CSR with a bad
// signature changes nothing. If the lints then refuse the copy, its record
// is marked StatusRefused before the lint error is returned; the issuer
// key never signed it. A crash before that mark leaves a pending record of
// a serial that was never signed, as a crash between recording and
// signing does: revocable, never wrong. Without overlap, the copy is
// linted first and only a clean copy is recorded.
func (c *CA) lintAndReserve(ctx context.Context, prof *profileState, iss *issuerState, tmpl *x509.Certificate, csr *x509.CertificateRequest, ids identifiers, sigOK chan error, overlap bool) (*lintedCert, error) {
	for attempt := 0; ; attempt++ {
		var err error
		if tmpl.SerialNumber, err = c.newSerial(); err != nil {
			return nil, err
		}
		cp, err := c.buildCopy(iss, tmpl, csr)
		if err != nil {
			return nil, err
		}
		rec := c.pendingRecord(prof, iss, tmpl.SerialNumber, cp.der, tmpl.NotBefore, tmpl.NotAfter, ids, false)
		var reserved chan error
		if overlap {
			reserved = make(chan error, 1)
			go func() {
				if awaitSignature(sigOK) != nil {
					reserved <- errNotReserved
					return
				}
				reserved <- c.store.ReserveSerial(ctx, rec)
			}()
		}
		linted, lintErr := c.checkCopy(prof, iss, cp, ids)
		var resErr error
		if overlap {
			resErr = <-reserved
		}
		if err := awaitSignature(sigOK); err != nil {
			return nil, err // nothing was recorded
		}
		if !overlap {
			if lintErr != nil {
				return nil, lintErr
			}
			resErr = c.store.ReserveSerial(ctx, rec)
		}
		switch {
		case resErr == nil && lintErr == nil:
			return linted, nil
		case resErr == nil:
			c.markRefused(ctx, rec.Serial, lintErr)
			return nil, lintErr
		case lintErr != nil:
			// Not on record (or another request's serial): nothing to mark.
			return nil, lintErr
		case !errors.Is(resErr, ErrSerialExists) || attempt == 2:
			return nil, fmt.Errorf("ca: record serial: %w", resErr)
		}
	}
}

// markRefused marks the pending record of serial, whose copy the lints
// refused, as StatusRefused: the issuer key never signed it. If that write
// fails the record stays pending, which is safe (a pending record is
// revocable); the caller returns the lint error either way.
func (c *CA) markRefused(ctx context.Context, serial string, why error) {
	_, err := c.store.UpdateRevocation(context.WithoutCancel(ctx), serial, func(r *Record) error {
		if r.Status != StatusPending || r.Final {
			return fmt.Errorf("ca: record %s is %s, not pending", serial, r.Status)
		}
		r.Status = StatusRefused
		return nil
	})
	if err != nil {
		c.log.Warn("ca: refused serial could not be marked refused; record stays pending", "serial", serial, "refusal", why, "err", err)
		return
	}
	c.log.Info("ca: serial refused by the lints; never signed", "serial", serial)
}

// signFinal has the issuer key sign the linted copy's TBSCertificate
// itself, so the result is the linted certificate by construction, and
// verifies that signature under the issuer certificate's key before
// anything is stored or returned. It returns the final certificate's DER.
func (c *CA) signFinal(iss *issuerState, linted *lintedCert) ([]byte, error) {
	sig, err := iss.signTBS(linted.tbs, "certificate")
	if err != nil {
		return nil, err
	}
	return assembleCertificate(linted.tbs, linted.sigAlg, sig)
}

// signTBS signs the DER tbs (a TBSCertificate or a TBSCertList that passed
// its lints) with the issuer key and verifies the signature against the
// issuer certificate before returning it; what names the object for
// errors.
func (iss *issuerState) signTBS(tbs []byte, what string) ([]byte, error) {
	if k, ok := iss.Signer.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(iss.Cert.PublicKey) {
		return nil, fmt.Errorf("ca: issuer %s: signer public key no longer matches the issuer certificate", iss.Name)
	}
	opts, err := signerOpts(iss.sigAlgo)
	if err != nil {
		return nil, err
	}
	// A nil rand, as x509.CreateCertificate was called with before: the
	// signer picks its own randomness (or signs deterministically).
	sig, err := crypto.SignMessage(iss.Signer, nil, tbs, opts)
	if err != nil {
		return nil, wrapSign("sign "+what, err)
	}
	if err := iss.checkSignature(tbs, sig); err != nil {
		return nil, fmt.Errorf("ca: issuer %s: signature returned by the signer does not verify; refusing it: %w", iss.Name, err)
	}
	return sig, nil
}

// pendingRecord is the record of a copy (linted or being linted, or a
// precertificate) before the issuer key signs.
func (c *CA) pendingRecord(prof *profileState, iss *issuerState, serial *big.Int, der []byte, nb, na time.Time, ids identifiers, precert bool) Record {
	return Record{
		Serial:    SerialString(serial),
		Issuer:    iss.Name,
		Profile:   prof.name,
		Status:    StatusPending,
		Precert:   precert,
		DER:       der,
		Names:     ids.strings(),
		NotBefore: nb.UTC(),
		NotAfter:  na.UTC(),
		Created:   c.clock().UTC(),
	}
}

// certFromParts describes the final certificate der, whose TBSCertificate
// is linted's.
func (c *CA) certFromParts(serial string, der []byte, linted *lintedCert, iss *issuerState, profile string, ids identifiers, st Status, ctFailures []string) *Certificate {
	return &Certificate{
		Serial:     serial,
		DER:        der,
		Chain:      iss.chainDER,
		Issuer:     iss.Name,
		Profile:    profile,
		NotBefore:  linted.z.NotBefore,
		NotAfter:   linted.z.NotAfter,
		Names:      ids.strings(),
		Status:     st,
		CTFailures: ctFailures,
	}
}
