package ca_test

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	"github.com/hsmca/hsmca/ca"
)

// crlClockCA is a CA with a short-lived "short" profile and a clock the
// test moves.
func crlClockCA(t *testing.T) (*testCA, *time.Time) {
	t.Helper()
	clock := time.Now().UTC()
	cfg := baseConfig()
	cfg.Profiles = map[string]ca.Profile{"short": {ExtKeyUsages: []string{"serverAuth"}, Validity: ca.Duration(10 * 24 * time.Hour)}}
	tc := newTestCA(t, cfg, ca.Options{Clock: func() time.Time { return clock }})
	return tc, &clock
}

func generateCRL(t *testing.T, tc *testCA) *x509.RevocationList {
	t.Helper()
	der, err := tc.GenerateCRL(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	return crl
}

// TestCRLKeepsExpiredEntryUntilListedAfterExpiry: RFC 5280 §3.3, an entry
// must not leave the CRL before it has appeared on one CRL issued after
// the certificate's validity period. A certificate revoked for
// keyCompromise an hour before it expires, with no CRL made before the
// expiry (a stopped CA), is still listed on the first CRL after it, and
// dropped from the one after that. A certificate revoked after it expired
// is listed once too.
func TestCRLKeepsExpiredEntryUntilListedAfterExpiry(t *testing.T) {
	tc, clock := crlClockCA(t)
	ctx := context.Background()
	issue := func(name string) *ca.Certificate {
		c, err := tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{name}}), Profile: "short"})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a, b := issue("a.svc.corp"), issue("b.svc.corp")
	*clock = a.NotAfter.Add(-time.Hour)
	if _, err := tc.Revoke(ctx, a.Serial, ca.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	*clock = a.NotAfter.Add(2 * time.Hour)
	if _, err := tc.Revoke(ctx, b.Serial, ca.ReasonKeyCompromise); err != nil { // b expired too
		t.Fatal(err)
	}
	first := generateCRL(t, tc)
	if len(first.RevokedCertificateEntries) != 2 {
		t.Fatalf("first CRL after the expiry lists %d entries, want both revocations", len(first.RevokedCertificateEntries))
	}
	*clock = clock.Add(3 * time.Hour)
	if second := generateCRL(t, tc); len(second.RevokedCertificateEntries) != 0 {
		t.Fatalf("the CRL after that still lists %d expired entries", len(second.RevokedCertificateEntries))
	}
}

// TestCRLThisUpdateNeverGoesBack: a revocation time raises a CRL's
// thisUpdate above the backdated time; when that entry leaves the next CRL
// (taken off hold), its thisUpdate must not fall back below the previous
// one's, or a client picking the newer CRL by thisUpdate would keep the
// older.
func TestCRLThisUpdateNeverGoesBack(t *testing.T) {
	tc, clock := crlClockCA(t)
	ctx := context.Background()
	c, err := tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}}), Profile: "short"})
	if err != nil {
		t.Fatal(err)
	}
	*clock = clock.Add(time.Hour)
	if _, err := tc.Revoke(ctx, c.Serial, ca.ReasonCertificateHold); err != nil {
		t.Fatal(err)
	}
	a := generateCRL(t, tc)
	if len(a.RevokedCertificateEntries) != 1 {
		t.Fatalf("CRL lists %d entries, want the one on hold", len(a.RevokedCertificateEntries))
	}
	if _, err := tc.Unrevoke(ctx, c.Serial); err != nil {
		t.Fatal(err)
	}
	*clock = clock.Add(10 * time.Minute)
	b := generateCRL(t, tc)
	if b.Number.Cmp(a.Number) <= 0 {
		t.Fatalf("CRL number %s after %s", b.Number, a.Number)
	}
	if b.ThisUpdate.Before(a.ThisUpdate) {
		t.Fatalf("CRL %s thisUpdate %s is before CRL %s's %s", b.Number, b.ThisUpdate, a.Number, a.ThisUpdate)
	}
	if b.ThisUpdate.After(*clock) {
		t.Fatalf("thisUpdate %s is in the future (now %s)", b.ThisUpdate, *clock)
	}
}

// TestCRLClockAheadKeepsUnexpiredEntry: a CRL made while the clock ran
// ahead has a thisUpdate past the notAfter of a certificate that has not
// expired. Once the clock is corrected, the next CRL must still list that
// certificate's revocation (keyCompromise here): it is dropped only when
// the certificate has expired by the CA's clock too.
func TestCRLClockAheadKeepsUnexpiredEntry(t *testing.T) {
	tc, clock := crlClockCA(t)
	ctx := context.Background()
	start := *clock
	c, err := tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}}), Profile: "short"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tc.Revoke(ctx, c.Serial, ca.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	*clock = start.Add(11 * 24 * time.Hour) // the clock runs 11 days ahead, past notAfter
	if n := len(generateCRL(t, tc).RevokedCertificateEntries); n != 1 {
		t.Fatalf("CRL made with the clock ahead lists %d entries, want 1", n)
	}
	*clock = start.Add(time.Hour) // corrected: the certificate is valid for ~10 more days
	crl := generateCRL(t, tc)
	if len(crl.RevokedCertificateEntries) != 1 {
		t.Fatalf("CRL made with the corrected clock lists %d entries; the keyCompromise of a certificate valid until %s (now %s) is gone",
			len(crl.RevokedCertificateEntries), c.NotAfter, *clock)
	}
	if got := crl.RevokedCertificateEntries[0]; got.SerialNumber.Text(16) != c.Serial || got.ReasonCode != int(ca.ReasonKeyCompromise) {
		t.Fatalf("entry %x reason %d, want %s keyCompromise", got.SerialNumber, got.ReasonCode, c.Serial)
	}
	// After the real expiry, the entry goes on one more CRL and then leaves.
	*clock = c.NotAfter.Add(2 * time.Hour) // thisUpdate (backdated an hour) after notAfter
	if n := len(generateCRL(t, tc).RevokedCertificateEntries); n != 1 {
		t.Fatalf("first CRL after the expiry lists %d entries, want 1", n)
	}
	*clock = clock.Add(3 * time.Hour)
	if n := len(generateCRL(t, tc).RevokedCertificateEntries); n != 0 {
		t.Fatalf("second CRL after the expiry lists %d entries, want 0", n)
	}
}

// TestCRLClockAheadThenNoCRLUntilExpiry: a CRL made with the clock 11 days
// ahead, the clock corrected, and no CRL until after the real expiry (an
// offline root's rare CRL ceremonies): the first CRL made after the expiry
// by a correct clock still lists the entry.
func TestCRLClockAheadThenNoCRLUntilExpiry(t *testing.T) {
	tc, clock := crlClockCA(t)
	ctx := context.Background()
	start := *clock
	c, err := tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}}), Profile: "short"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tc.Revoke(ctx, c.Serial, ca.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	*clock = start.Add(11 * 24 * time.Hour)
	if n := len(generateCRL(t, tc).RevokedCertificateEntries); n != 1 {
		t.Fatalf("clock-ahead CRL lists %d entries", n)
	}
	*clock = c.NotAfter.Add(2 * time.Hour)
	crl := generateCRL(t, tc)
	if n := len(crl.RevokedCertificateEntries); n != 1 {
		t.Fatalf("first CRL by a correct clock after the expiry (thisUpdate %s, notAfter %s) lists %d entries, want 1", crl.ThisUpdate, c.NotAfter, n)
	}
	*clock = clock.Add(time.Hour)
	if n := len(generateCRL(t, tc).RevokedCertificateEntries); n != 0 {
		t.Fatalf("the CRL after that still lists %d entries", n)
	}
}
