package ca_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/ocsp"

	"github.com/hsmca/hsmca/ca"
	"github.com/hsmca/hsmca/store"
)

// pausingStore lets a test run code between OCSPResponse's store read and
// its cache put.
type pausingStore struct {
	*store.Store
	hook func()
}

func (p *pausingStore) CertBySerial(ctx context.Context, s string) (ca.Record, error) {
	r, err := p.Store.CertBySerial(ctx, s)
	if h := p.hook; h != nil {
		p.hook = nil
		h()
	}
	return r, err
}

// TestOCSPNoStaleGoodCachedAfterRevoke: a revocation that lands between
// OCSPResponse's store read and its cache put must not leave the "good"
// answer cached (it would be served for half of OCSP.Validity).
func TestOCSPNoStaleGoodCachedAfterRevoke(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ca.db")
	st, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ps := &pausingStore{Store: st}
	tc := newTestCAWith(t, baseConfig(), ca.Options{}, newPKI(t), ps, path)
	ctx := context.Background()
	issued, err := tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}}), Profile: "server"})
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(issued.DER)
	req := ocspRequest(t, cert, tc.pki.inter)
	// A revocation lands after OCSPResponse read the record, before it
	// cached its answer (another goroutine in a server).
	ps.hook = func() {
		if _, err := tc.Revoke(ctx, issued.Serial, ca.ReasonKeyCompromise); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tc.OCSPResponse(ctx, req); err != nil {
		t.Fatal(err)
	}
	der, err := tc.OCSPResponse(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ocsp.ParseResponseForCert(der, cert, tc.pki.inter)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != ocsp.Revoked {
		t.Fatalf("OCSP after revocation: status %d (0=good), want revoked", resp.Status)
	}
}

// TestOCSPUnrelatedRevocationKeepsCaching: a revocation of another serial
// between OCSPResponse's store read and its cache put does not leave the
// answer uncached; otherwise, under steady revocations, every OCSP request
// would cost an HSM signature.
func TestOCSPUnrelatedRevocationKeepsCaching(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ca.db")
	st, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ps := &pausingStore{Store: st}
	tc := newTestCAWith(t, baseConfig(), ca.Options{}, newPKI(t), ps, path)
	ctx := context.Background()
	issue := func(name string) *ca.Certificate {
		c, err := tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{name}}), Profile: "server"})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a, b := issue("a.svc.corp"), issue("b.svc.corp")
	cert, _ := x509.ParseCertificate(a.DER)
	req := ocspRequest(t, cert, tc.pki.inter)
	ps.hook = func() {
		if _, err := tc.Revoke(ctx, b.Serial, ca.ReasonKeyCompromise); err != nil {
			t.Fatal(err)
		}
	}
	first, err := tc.OCSPResponse(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	calls := tc.signer.calls.Load()
	second, err := tc.OCSPResponse(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first, second) || tc.signer.calls.Load() != calls {
		t.Fatalf("a's answer was not cached (%d more signatures) because b was revoked meanwhile", tc.signer.calls.Load()-calls)
	}
	resp, err := ocsp.ParseResponseForCert(second, cert, tc.pki.inter)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != ocsp.Good {
		t.Fatalf("status %d, want good", resp.Status)
	}
}
