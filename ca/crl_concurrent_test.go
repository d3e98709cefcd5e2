package ca_test

import (
	"context"
	"crypto/x509"
	"path/filepath"
	"testing"
	"time"

	"github.com/hsmca/hsmca/ca"
	"github.com/hsmca/hsmca/store"
)

// pauseOnRevokedList holds the next GenerateCRL right after it has read the
// revoked list, until the test releases it.
type pauseOnRevokedList struct {
	*store.Store
	pause chan chan struct{}
}

func (p *pauseOnRevokedList) RevokedSerials(ctx context.Context, issuer string) ([]ca.RevokedEntry, error) {
	e, err := p.Store.RevokedSerials(ctx, issuer)
	select {
	case gate := <-p.pause:
		gate <- struct{}{} // read
		<-gate             // released
	default:
	}
	return e, err
}

// Two CRL generations at once, with a revocation between the first one's
// reading of the revoked list and the second one's: the higher CRL number
// must go to the newer list, so the latest CRL never leaves out a
// revocation that a lower-numbered CRL already published.
func TestCRLNumberFollowsRevokedList(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ca.db")
	st, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ps := &pauseOnRevokedList{Store: st, pause: make(chan chan struct{}, 1)}
	tc := newTestCAWith(t, baseConfig(), ca.Options{}, newPKI(t), ps, path)
	cert, err := tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}}), Profile: "server"})
	if err != nil {
		t.Fatal(err)
	}
	gate := make(chan struct{})
	ps.pause <- gate
	first := make(chan error, 1)
	go func() { _, err := tc.GenerateCRL(ctx, ""); first <- err }()
	<-gate // the first generation has read an empty revoked list
	if _, err := tc.Revoke(ctx, cert.Serial, ca.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	second := make(chan error, 1)
	go func() { _, err := tc.GenerateCRL(ctx, ""); second <- err }()
	// Give the second generation time to finish if nothing holds it back
	// (the bug this test is for); held back, it finishes after the first.
	var secondErr error
	secondDone := false
	select {
	case secondErr = <-second:
		secondDone = true
	case <-time.After(time.Second):
	}
	gate <- struct{}{}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if !secondDone {
		secondErr = <-second
	}
	if secondErr != nil {
		t.Fatal(secondErr)
	}
	der, err := tc.LatestCRL(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if crl.Number.Int64() != 2 || len(crl.RevokedCertificateEntries) != 1 {
		t.Fatalf("latest CRL is number %v with %d entries; want number 2 listing the revoked certificate", crl.Number, len(crl.RevokedCertificateEntries))
	}
}
