package ca_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/hsmca/hsmca/ca"
	"github.com/hsmca/hsmca/store"
)

func TestBadInputsChangeNothing(t *testing.T) {
	tc := newTestCA(t, baseConfig(), ca.Options{})
	ctx := context.Background()
	good := makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}})
	badSig := append([]byte(nil), good...)
	badSig[len(badSig)-1] ^= 0x01
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	isBadCSR := func(rule string) func(error) bool {
		return func(err error) bool {
			var e *ca.ErrBadCSR
			return errors.As(err, &e) && contains(e.Rule, rule)
		}
	}
	tests := []struct {
		name string
		req  ca.IssueRequest
		want func(error) bool
	}{
		{"malformed CSR", ca.IssueRequest{CSR: []byte("not a csr"), Profile: "server"}, isBadCSR("malformed CSR")},
		{"empty CSR", ca.IssueRequest{Profile: "server"}, isBadCSR("empty CSR")},
		{"bad signature", ca.IssueRequest{CSR: badSig, Profile: "server"}, isBadCSR("bad signature")},
		// The signature is checked concurrently with the rest; its verdict
		// still comes first, as when it was checked first.
		{"bad signature and unknown profile", ca.IssueRequest{CSR: badSig, Profile: "nope"}, isBadCSR("bad signature")},
		{"bad signature and bad SAN", ca.IssueRequest{CSR: corruptSignature(makeCSR(t, csrOpts{dns: []string{"a..svc.corp"}})), Profile: "server"}, isBadCSR("bad signature")},
		{"weak RSA key", ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}, key: rsa1024}), Profile: "server"}, isBadCSR("key type rsa-1024 not allowed")},
		{"curve not allowed", ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}, key: p521}), Profile: "server"}, isBadCSR("key type ecdsa-p521 not allowed")},
		{"duplicate SAN", ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.svc.corp", "A.svc.corp"}}), Profile: "server"}, isBadCSR("duplicate SAN")},
		{"malformed SAN", ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a..svc.corp"}}), Profile: "server"}, isBadCSR("malformed DNS SAN")},
		{"bad wildcard", ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.*.svc.corp"}}), Profile: "server"}, isBadCSR("malformed DNS SAN")},
		{"no names", ca.IssueRequest{CSR: makeCSR(t, csrOpts{}), Profile: "server"}, isBadCSR("no names")},
		{"too many names", ca.IssueRequest{CSR: makeCSR(t, csrOpts{cn: "a", emails: []string{"a@x.corp", "b@x.corp", "c@x.corp", "d@x.corp", "e@x.corp"}}), Profile: "operator"}, isBadCSR("exceed")},
		{"unknown profile", ca.IssueRequest{CSR: good, Profile: "nope"}, func(err error) bool { return errors.Is(err, ca.ErrUnknownProfile) }},
		{"unknown issuer", ca.IssueRequest{CSR: good, Profile: "server", Issuer: "nope"}, func(err error) bool { return errors.Is(err, ca.ErrUnknownIssuer) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, calls := countCerts(t, tc.CA), tc.signer.calls.Load()
			_, err := tc.Issue(ctx, tt.req)
			if err == nil || !tt.want(err) {
				t.Fatalf("err = %v", err)
			}
			if countCerts(t, tc.CA) != before || tc.signer.calls.Load() != calls {
				t.Error("refused request changed the store or reached the signer")
			}
		})
	}
	for _, op := range []func(string) error{
		func(s string) error { _, err := tc.Get(ctx, s); return err },
		func(s string) error { _, err := tc.Revoke(ctx, s, ca.ReasonKeyCompromise); return err },
		func(s string) error { _, err := tc.Unrevoke(ctx, s); return err },
	} {
		for _, s := range []string{"1234abcd", "zz", ""} {
			if err := op(s); !errors.Is(err, ca.ErrUnknownSerial) {
				t.Errorf("serial %q: err %v, want ErrUnknownSerial", s, err)
			}
		}
	}
}

// corruptSignature flips the last bit of a DER CSR, which lies in its
// signature.
func corruptSignature(der []byte) []byte {
	out := append([]byte(nil), der...)
	out[len(out)-1] ^= 0x01
	return out
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

func TestLintFailureRefusedBeforeSigning(t *testing.T) {
	for _, overlap := range []bool{false, true} {
		t.Run(fmt.Sprintf("recordWhileLinting=%v", overlap), func(t *testing.T) {
			testLintFailureRefused(t, overlap)
		})
	}
}

func testLintFailureRefused(t *testing.T, overlap bool) {
	cfg := baseConfig()
	// BR 6.3.2 caps TLS server certificates at 398 days.
	cfg.Profiles = map[string]ca.Profile{"long": {ExtKeyUsages: []string{"serverAuth"}, Validity: ca.Duration(500 * 24 * time.Hour)}}
	tc := newTestCA(t, cfg, ca.Options{})
	ca.SetRecordWhileLinting(tc.CA, overlap)
	_, err := tc.Issue(context.Background(), ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}}), Profile: "long"})
	var le *ca.ErrLint
	if !errors.As(err, &le) {
		t.Fatalf("err %v, want ErrLint", err)
	}
	found := false
	for _, r := range le.Results {
		found = found || (r.Status == "error" && contains(r.Lint, "valid_time_longer_than"))
	}
	if !found {
		t.Errorf("lint results %+v lack the validity lint", le.Results)
	}
	if n := tc.signer.calls.Load(); n != 0 {
		t.Errorf("issuer key signed %d times for a refused certificate", n)
	}
	ctx := context.Background()
	if l, err := tc.List(ctx, ca.ListFilter{}); err != nil || len(l) != 0 {
		t.Errorf("List after a lint refusal: %d records, %v; want none", len(l), err)
	}
	refused, err := tc.List(ctx, ca.ListFilter{Refused: true})
	if !overlap {
		// Linted first: a refused copy is never recorded.
		if err != nil || len(refused) != 0 {
			t.Errorf("refused records: %d, %v; want none", len(refused), err)
		}
		return
	}
	// The serial was recorded while the copy was linted (the record's
	// flush overlaps the lints); the refusal marks it refused: kept so the
	// serial is never reused, but neither listed, revocable nor valid.
	if err != nil || len(refused) != 1 {
		t.Fatalf("refused records: %d, %v; want 1", len(refused), err)
	}
	r := refused[0]
	if r.Status != ca.StatusRefused || r.DER != nil || r.Profile != "long" {
		t.Errorf("refused record %+v", r)
	}
	if _, err := tc.Revoke(ctx, r.Serial, ca.ReasonKeyCompromise); !errors.Is(err, ca.ErrBadRequest) {
		t.Errorf("revoking a refused serial: %v, want ErrBadRequest", err)
	}
	rec, err := tc.store.CertBySerial(ctx, r.Serial)
	if err != nil || rec.Final || rec.Status != ca.StatusRefused {
		t.Errorf("stored refused record %+v, %v", rec, err)
	}
	if err := tc.store.StoreIssued(ctx, r.Serial, []byte("x"), nil); err == nil {
		t.Error("StoreIssued accepted a final certificate for a refused serial")
	}
	n, _ := new(big.Int).SetString(r.Serial, 16)
	der, err := tc.OCSPResponse(ctx, ocspRequest(t, &x509.Certificate{SerialNumber: n}, tc.pki.inter))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(der, ocsp.UnauthorizedErrorResponse) {
		t.Errorf("OCSP for a refused serial: %x; want the unauthorized error response (never signed)", der)
	}
}

// failingStore fails StoreIssued, as a crash between "serial recorded" and
// "final certificate stored" would.
type failingStore struct{ *store.Store }

func (failingStore) StoreIssued(context.Context, string, []byte, []string) error {
	return errors.New("injected crash")
}

func TestCrashBetweenPendingAndFinal(t *testing.T) {
	ctx := context.Background()
	for _, mode := range []string{"signer fails", "bad signature", "store fails"} {
		t.Run(mode, func(t *testing.T) {
			tc := newTestCA(t, baseConfig(), ca.Options{})
			victim := tc
			if mode == "store fails" {
				victim = newTestCAWith(t, baseConfig(), ca.Options{}, tc.pki, failingStore{tc.store}, tc.path)
			} else if mode == "bad signature" {
				tc.signer.corrupt.Store(true)
			} else {
				tc.signer.failWith(errors.New("injected HSM failure"))
			}
			if _, err := victim.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}}), Profile: "server"}); err == nil {
				t.Fatal("issuance succeeded despite the injected fault")
			}
			pend, err := tc.List(ctx, ca.ListFilter{Pending: true})
			if err != nil || len(pend) != 1 {
				t.Fatalf("pending records: %d, %v", len(pend), err)
			}
			if pend[0].DER != nil {
				t.Error("a pending record hands out a certificate")
			}
			tc.signer.fail.Store(nil)
			tc.signer.corrupt.Store(false)
			rev, err := tc.Revoke(ctx, pend[0].Serial, ca.ReasonSuperseded)
			if err != nil || rev.Status != ca.StatusRevoked {
				t.Fatalf("revoke pending: %v", err)
			}
			der, err := tc.GenerateCRL(ctx, "")
			if err != nil {
				t.Fatal(err)
			}
			crl, _ := x509.ParseRevocationList(der)
			if len(crl.RevokedCertificateEntries) != 1 || ca.SerialString(crl.RevokedCertificateEntries[0].SerialNumber) != pend[0].Serial {
				t.Errorf("CRL does not list the pending serial")
			}
		})
	}
}

func TestConcurrentIssuanceNeverReusesSerial(t *testing.T) {
	tc := newTestCA(t, baseConfig(), ca.Options{})
	ctx := context.Background()
	const workers, each = 8, 25
	csr := makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}})
	var mu sync.Mutex
	seen := map[string]bool{}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				c, err := tc.Issue(ctx, ca.IssueRequest{CSR: csr, Profile: "server"})
				if err != nil {
					errs <- err
					return
				}
				if res, err := ca.LintDER(tc.CA, "server", c.DER); err != nil || len(res) > 0 {
					errs <- fmt.Errorf("lint: %v %+v", err, res)
					return
				}
				mu.Lock()
				if seen[c.Serial] {
					errs <- fmt.Errorf("serial %s issued twice", c.Serial)
				}
				seen[c.Serial] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(seen) != workers*each || countCerts(t, tc.CA) != workers*each {
		t.Fatalf("%d distinct serials, %d records; want %d", len(seen), countCerts(t, tc.CA), workers*each)
	}
}

// repeatRand returns the same bytes again and again, to force serial
// collisions.
type repeatRand struct{}

func (repeatRand) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 0x42
	}
	return len(p), nil
}

func TestSerialCollisionRefused(t *testing.T) {
	tc := newTestCA(t, baseConfig(), ca.Options{Rand: repeatRand{}})
	ctx := context.Background()
	req := ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}}), Profile: "server"}
	if _, err := tc.Issue(ctx, req); err != nil {
		t.Fatal(err)
	}
	calls := tc.signer.calls.Load()
	if _, err := tc.Issue(ctx, req); !errors.Is(err, ca.ErrSerialExists) {
		t.Fatalf("second issuance with the same randomness: %v, want ErrSerialExists", err)
	}
	if tc.signer.calls.Load() != calls || countCerts(t, tc.CA) != 1 {
		t.Error("a colliding serial was signed or stored")
	}
}

func TestRevokeAndCRL(t *testing.T) {
	tc := newTestCA(t, baseConfig(), ca.Options{})
	ctx := context.Background()
	var serials []string
	for i := 0; i < 3; i++ {
		c, err := tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}}), Profile: "server"})
		if err != nil {
			t.Fatal(err)
		}
		mustLintClean(t, tc.CA, "server", c.DER)
		serials = append(serials, c.Serial)
	}
	reason, err := ca.ParseReason("keyCompromise")
	if err != nil || reason != 1 {
		t.Fatalf("ParseReason: %d %v", reason, err)
	}
	if _, err := tc.Revoke(ctx, serials[0], reason); err != nil {
		t.Fatal(err)
	}
	if _, err := tc.Revoke(ctx, serials[1], ca.ReasonCertificateHold); err != nil {
		t.Fatal(err)
	}
	if _, err := tc.Revoke(ctx, serials[0], ca.ReasonSuperseded); !errors.Is(err, ca.ErrAlreadyRevoked) {
		t.Errorf("revoking twice: %v", err)
	}
	if _, err := tc.Unrevoke(ctx, serials[0]); !errors.Is(err, ca.ErrNotOnHold) {
		t.Errorf("unrevoke keyCompromise: %v", err)
	}
	if _, err := tc.Unrevoke(ctx, serials[2]); !errors.Is(err, ca.ErrNotOnHold) {
		t.Errorf("unrevoke valid: %v", err)
	}
	revoked, _ := tc.List(ctx, ca.ListFilter{Revoked: true})
	if len(revoked) != 2 {
		t.Fatalf("%d revoked, want 2", len(revoked))
	}

	var last int64
	for gen := 1; gen <= 3; gen++ {
		der, err := tc.GenerateCRL(ctx, "issuing-1")
		if err != nil {
			t.Fatal(err)
		}
		crl, err := x509.ParseRevocationList(der)
		if err != nil {
			t.Fatal(err)
		}
		if err := crl.CheckSignatureFrom(tc.pki.inter); err != nil {
			t.Fatal(err)
		}
		if crl.Number.Int64() <= last {
			t.Errorf("CRL number %d after %d", crl.Number, last)
		}
		last = crl.Number.Int64()
		if string(crl.AuthorityKeyId) != string(tc.pki.inter.SubjectKeyId) || !crl.NextUpdate.After(crl.ThisUpdate) {
			t.Error("CRL lacks AKI or next update")
		}
		got := map[string]int{}
		for _, e := range crl.RevokedCertificateEntries {
			got[ca.SerialString(e.SerialNumber)] = e.ReasonCode
		}
		want := map[string]int{serials[0]: ca.ReasonKeyCompromise, serials[1]: ca.ReasonCertificateHold}
		if gen == 3 {
			want = map[string]int{serials[0]: ca.ReasonKeyCompromise}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("generation %d: CRL entries %v, want %v", gen, got, want)
		}
		latest, err := tc.LatestCRL(ctx, "")
		if err != nil || string(latest) != string(der) {
			t.Errorf("LatestCRL is not the last generated CRL: %v", err)
		}
		if gen == 2 {
			if _, err := tc.Unrevoke(ctx, serials[1]); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The CRL number survives a restart.
	tc.store.Close()
	st, err := store.Open(tc.path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	tc2 := newTestCAWith(t, baseConfig(), ca.Options{}, tc.pki, st, tc.path)
	der, err := tc2.GenerateCRL(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	crl, _ := x509.ParseRevocationList(der)
	if crl.Number.Int64() != last+1 {
		t.Errorf("CRL number after restart %d, want %d", crl.Number, last+1)
	}
}

func TestSealedSigner(t *testing.T) {
	tc := newTestCA(t, baseConfig(), ca.Options{})
	ctx := context.Background()
	c, err := tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}}), Profile: "server"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tc.GenerateCRL(ctx, ""); err != nil {
		t.Fatal(err)
	}
	tc.signer.failWith(sealedErr{})
	if _, err := tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}}), Profile: "server"}); !errors.Is(err, ca.ErrSealed) {
		t.Errorf("Issue while sealed: %v", err)
	}
	if _, err := tc.GenerateCRL(ctx, ""); !errors.Is(err, ca.ErrSealed) {
		t.Errorf("GenerateCRL while sealed: %v", err)
	}
	if _, err := tc.LatestCRL(ctx, ""); err != nil {
		t.Errorf("LatestCRL while sealed: %v", err)
	}
	cert, _ := x509.ParseCertificate(c.DER)
	if _, err := tc.OCSPResponse(ctx, ocspRequest(t, cert, tc.pki.inter)); !errors.Is(err, ca.ErrSealed) {
		t.Errorf("OCSP while sealed: %v", err)
	}
}

func TestListFilters(t *testing.T) {
	now := time.Now().UTC()
	clock := now
	cfg := baseConfig()
	cfg.Profiles = map[string]ca.Profile{"short": {ExtKeyUsages: []string{"serverAuth"}, Validity: ca.Duration(10 * 24 * time.Hour)}}
	tc := newTestCA(t, cfg, ca.Options{Clock: func() time.Time { return clock }})
	ctx := context.Background()
	issue := func(profile string) *ca.Certificate {
		c, err := tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}}), Profile: profile})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	short, _ := issue("short"), issue("server")
	got, err := tc.List(ctx, ca.ListFilter{ExpiringWithin: 30 * 24 * time.Hour})
	if err != nil || len(got) != 1 || got[0].Serial != short.Serial {
		t.Fatalf("expiring within 30d: %v %v", got, err)
	}
	if got, _ := tc.List(ctx, ca.ListFilter{Profile: "server"}); len(got) != 1 {
		t.Errorf("profile filter: %d", len(got))
	}
	clock = now.Add(11 * 24 * time.Hour)
	if got, _ := tc.List(ctx, ca.ListFilter{ExpiringWithin: 30 * 24 * time.Hour}); len(got) != 0 {
		t.Errorf("an expired certificate is listed as expiring: %d", len(got))
	}
	page, _ := tc.List(ctx, ca.ListFilter{Limit: 1})
	rest, _ := tc.List(ctx, ca.ListFilter{After: page[0].Serial})
	if len(page) != 1 || len(rest) != 1 || rest[0].Serial == page[0].Serial {
		t.Errorf("paging: %d then %d", len(page), len(rest))
	}
}

// TestParseReasonSpellings: names in any case, as one word or with
// separators between their words, and plain decimal numbers are accepted;
// signs, separators inside a number or a word, and the codes a leaf may
// not be revoked with are refused.
func TestParseReasonSpellings(t *testing.T) {
	for in, want := range map[string]int{
		"keyCompromise": 1, "KEYCOMPROMISE": 1, "key-compromise": 1, "key_compromise": 1, "key compromise": 1,
		" 1 ": 1, "4": 4, "cessation-of-operation": 5, "certificateHold": 6, "aa-compromise": 10, "aACompromise": 10,
		"0": 0, "unspecified": 0, "009": 9,
	} {
		if got, err := ca.ParseReason(in); err != nil || got != want {
			t.Errorf("ParseReason(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "-4", "+9", "1-0", "1 0", "k_e_y compromise", "keycompromise!", "key--compromise",
		"2", "cACompromise", "7", "8", "removeFromCRL", "11"} {
		if got, err := ca.ParseReason(in); err == nil {
			t.Errorf("ParseReason(%q) = %d (%s), want an error", in, got, ca.ReasonString(got))
		}
	}
}

// TestListRefusesNegativeExpiring: a negative ExpiringWithin is a bad
// request, not "no filter".
func TestListRefusesNegativeExpiring(t *testing.T) {
	tc := newTestCA(t, baseConfig(), ca.Options{})
	if _, err := tc.List(context.Background(), ca.ListFilter{ExpiringWithin: -time.Hour}); !errors.Is(err, ca.ErrBadRequest) {
		t.Fatalf("List with ExpiringWithin -1h: %v, want ErrBadRequest", err)
	}
}
