package ca_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsmca/hsmca/ca"
	"github.com/hsmca/hsmca/store"
)

func TestIssueProfiles(t *testing.T) {
	tc := newTestCA(t, baseConfig(), ca.Options{})
	ctx := context.Background()
	roots := x509.NewCertPool()
	roots.AddCert(tc.pki.root)
	inters := x509.NewCertPool()
	inters.AddCert(tc.pki.inter)

	tests := []struct {
		name      string
		profile   string
		csr       csrOpts
		wantNames []string
		eku       x509.ExtKeyUsage
	}{
		{"server private names", "server", csrOpts{cn: "db.svc.corp", dns: []string{"db.svc.corp", "db", "db.example.internal"}}, []string{"db.svc.corp", "db", "db.example.internal"}, x509.ExtKeyUsageServerAuth},
		{"server CN added to SANs", "server", csrOpts{cn: "api.svc.corp"}, []string{"api.svc.corp"}, x509.ExtKeyUsageServerAuth},
		{"server wildcard and private IP", "server", csrOpts{dns: []string{"*.apps.svc.corp"}, ips: []string{"10.1.2.3", "fd00::1"}}, []string{"*.apps.svc.corp", "10.1.2.3", "fd00::1"}, x509.ExtKeyUsageServerAuth},
		{"client email", "client", csrOpts{cn: "alice", emails: []string{"alice@corp.example"}}, []string{"alice@corp.example"}, x509.ExtKeyUsageClientAuth},
		{"operator uri", "operator", csrOpts{cn: "ops-bob", uris: []string{"spiffe://svc.corp/operator/bob"}}, []string{"spiffe://svc.corp/operator/bob"}, x509.ExtKeyUsageClientAuth},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, tt.csr), Profile: tt.profile})
			if err != nil {
				t.Fatal(err)
			}
			mustLintClean(t, tc.CA, tt.profile, got.DER)
			cert, err := x509.ParseCertificate(got.DER)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{tt.eku}}); err != nil {
				t.Fatalf("verify: %v", err)
			}
			if !slices.Equal(got.Names, tt.wantNames) {
				t.Errorf("names %v, want %v", got.Names, tt.wantNames)
			}
			if got.Serial != ca.SerialString(cert.SerialNumber) || cert.SerialNumber.BitLen() < 128 {
				t.Errorf("serial %s (%d bits)", got.Serial, cert.SerialNumber.BitLen())
			}
			if !slices.Equal(cert.CRLDistributionPoints, []string{"http://pki.svc.corp/crl/issuing-1.crl"}) ||
				!slices.Equal(cert.IssuingCertificateURL, []string{"http://pki.svc.corp/issuer/issuing-1.crt"}) ||
				!slices.Equal(cert.OCSPServer, []string{"http://pki.svc.corp/ocsp"}) {
				t.Errorf("URLs: crl %v aia %v ocsp %v", cert.CRLDistributionPoints, cert.IssuingCertificateURL, cert.OCSPServer)
			}
			if len(got.Chain) != 2 || !slices.Equal(got.Chain[0], tc.pki.inter.Raw) {
				t.Errorf("chain has %d certificates", len(got.Chain))
			}
			rec, err := tc.Get(ctx, got.Serial)
			if err != nil {
				t.Fatal(err)
			}
			if rec.Status != ca.StatusValid || !slices.Equal(rec.DER, got.DER) || rec.Profile != tt.profile {
				t.Errorf("stored record: status %s profile %s", rec.Status, rec.Profile)
			}
		})
	}
}

func TestIssueValidityWindow(t *testing.T) {
	now := time.Date(2027, 1, 1, 12, 0, 0, 0, time.UTC)
	cfg := baseConfig()
	tc := newTestCA(t, cfg, ca.Options{Clock: func() time.Time { return now }})
	ctx := context.Background()
	got, err := tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}}), Profile: "server"})
	if err != nil {
		t.Fatal(err)
	}
	if !got.NotBefore.Equal(now.Add(-time.Hour)) || !got.NotAfter.Equal(now.Add(90*24*time.Hour-time.Second)) {
		t.Errorf("window %s..%s", got.NotBefore, got.NotAfter)
	}
	nb, na := now.Add(time.Hour), now.Add(48*time.Hour)
	got, err = tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}}), Profile: "server", NotBefore: nb, NotAfter: na})
	if err != nil {
		t.Fatal(err)
	}
	if !got.NotBefore.Equal(nb) || !got.NotAfter.Equal(na) {
		t.Errorf("requested window not honoured: %s..%s", got.NotBefore, got.NotAfter)
	}
	mustLintClean(t, tc.CA, "server", got.DER)
	before := countCerts(t, tc.CA)
	for name, req := range map[string]ca.IssueRequest{
		"too long":        {Profile: "server", NotBefore: now, NotAfter: now.Add(400 * 24 * time.Hour)},
		"reversed":        {Profile: "server", NotBefore: now.Add(time.Hour), NotAfter: now},
		"profile refuses": {Profile: "client", NotAfter: now.Add(time.Hour)},
	} {
		req.CSR = makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}})
		if req.Profile == "client" {
			req.CSR = makeCSR(t, csrOpts{cn: "x", emails: []string{"x@svc.corp"}})
		}
		if _, err := tc.Issue(ctx, req); !errors.Is(err, ca.ErrBadRequest) {
			t.Errorf("%s: err %v, want ErrBadRequest", name, err)
		}
	}
	if n := countCerts(t, tc.CA); n != before {
		t.Errorf("refused requests changed the store: %d → %d records", before, n)
	}
}

func TestIssueNamesMustMatchRequest(t *testing.T) {
	tc := newTestCA(t, baseConfig(), ca.Options{})
	ctx := context.Background()
	csr := makeCSR(t, csrOpts{dns: []string{"a.svc.corp", "b.svc.corp"}})
	if _, err := tc.Issue(ctx, ca.IssueRequest{CSR: csr, Profile: "server", Names: []string{"B.svc.corp", "a.svc.corp"}}); err != nil {
		t.Fatalf("matching names: %v", err)
	}
	var bad *ca.ErrBadCSR
	if _, err := tc.Issue(ctx, ca.IssueRequest{CSR: csr, Profile: "server", Names: []string{"a.svc.corp"}}); !errors.As(err, &bad) {
		t.Fatalf("extra CSR name: err %v, want ErrBadCSR", err)
	}
	if _, err := tc.Issue(ctx, ca.IssueRequest{CSR: csr, Profile: "server", Names: []string{"a.svc.corp", "b.svc.corp", "c.svc.corp"}}); !errors.As(err, &bad) {
		t.Fatalf("missing name: err %v, want ErrBadCSR", err)
	}
}

func TestNamePolicy(t *testing.T) {
	cfg := baseConfig()
	cfg.Policy = ca.NamePolicy{
		AllowedDNSSuffixes:  []string{"svc.corp", "example.internal"},
		DeniedDNSSuffixes:   []string{"secret.svc.corp"},
		AllowedIPRanges:     []string{"10.0.0.0/8"},
		DeniedIPRanges:      []string{"10.66.0.0/16"},
		AllowedEmailDomains: []string{"corp.example"},
	}
	cfg.Profiles = map[string]ca.Profile{
		"web": {ExtKeyUsages: []string{"serverAuth"}, KeepCN: true, Policy: ca.NamePolicy{AllowedDNSSuffixes: []string{"web.svc.corp"}}},
	}
	tc := newTestCA(t, cfg, ca.Options{})
	ctx := context.Background()
	tests := []struct {
		name, profile string
		csr           csrOpts
		refused       string // "" means allowed
	}{
		{"allowed suffix", "server", csrOpts{dns: []string{"db.svc.corp"}}, ""},
		{"suffix itself", "server", csrOpts{dns: []string{"example.internal"}}, ""},
		{"outside allow-list", "server", csrOpts{dns: []string{"db.svc.corp", "www.example.com"}}, "www.example.com"},
		{"label boundary", "server", csrOpts{dns: []string{"xsvc.corp"}}, "xsvc.corp"},
		{"denied suffix", "server", csrOpts{dns: []string{"vault.secret.svc.corp"}}, "vault.secret.svc.corp"},
		{"wildcard covering denied", "server", csrOpts{dns: []string{"*.svc.corp"}}, "*.svc.corp"},
		{"CN is a name too", "server", csrOpts{cn: "evil.example.com", dns: []string{"db.svc.corp"}}, "evil.example.com"},
		{"allowed IP", "server", csrOpts{ips: []string{"10.1.1.1"}}, ""},
		{"denied IP", "server", csrOpts{ips: []string{"10.66.1.1"}}, "10.66.1.1"},
		{"IP outside", "server", csrOpts{ips: []string{"192.168.1.1"}}, "192.168.1.1"},
		{"email allowed", "client", csrOpts{cn: "a", emails: []string{"a@corp.example"}}, ""},
		{"email refused", "client", csrOpts{cn: "a", emails: []string{"a@gmail.com"}}, "a@gmail.com"},
		{"profile narrows", "web", csrOpts{dns: []string{"db.svc.corp"}}, "db.svc.corp"},
		{"profile allows", "web", csrOpts{dns: []string{"a.web.svc.corp"}}, ""},
		{"SAN type not in profile", "server", csrOpts{dns: []string{"a.svc.corp"}, emails: []string{"a@corp.example"}}, "a@corp.example"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, calls := countCerts(t, tc.CA), tc.signer.calls.Load()
			got, err := tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, tt.csr), Profile: tt.profile})
			if tt.refused == "" {
				if err != nil {
					t.Fatal(err)
				}
				mustLintClean(t, tc.CA, tt.profile, got.DER)
				return
			}
			var pe *ca.ErrPolicy
			if !errors.As(err, &pe) || pe.Name != tt.refused {
				t.Fatalf("err %v, want ErrPolicy naming %q", err, tt.refused)
			}
			if countCerts(t, tc.CA) != before || tc.signer.calls.Load() != calls {
				t.Error("a refused request changed the store or reached the signer")
			}
		})
	}
	if err := tc.CheckNames("server", []string{"a.svc.corp"}, []net.IP{net.ParseIP("10.0.0.1")}); err != nil {
		t.Errorf("CheckNames allowed: %v", err)
	}
	var pe *ca.ErrPolicy
	if err := tc.CheckNames("server", []string{"a.svc.corp", "x.example.com"}, nil); !errors.As(err, &pe) || pe.Name != "x.example.com" {
		t.Errorf("CheckNames refused: %v", err)
	}
	if err := tc.CheckNames("nope", nil, nil); !errors.Is(err, ca.ErrUnknownProfile) {
		t.Errorf("CheckNames unknown profile: %v", err)
	}
}

// TestIssueVerified issues from a CSR the caller parsed and verified
// itself; every check but the signature still applies.
func TestIssueVerified(t *testing.T) {
	tc := newTestCA(t, baseConfig(), ca.Options{})
	ctx := context.Background()
	csr, err := ca.ParseCSR(makeCSR(t, csrOpts{dns: []string{"v.svc.corp"}}))
	if err != nil {
		t.Fatal(err)
	}
	c, err := tc.IssueVerified(ctx, ca.IssueRequest{ParsedCSR: csr, Profile: "server"})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := tc.Get(ctx, c.Serial)
	if err != nil || rec.Status != ca.StatusValid || !bytes.Equal(rec.DER, c.DER) {
		t.Fatalf("stored record %+v, err %v", rec.Status, err)
	}
	mustLintClean(t, tc.CA, "server", c.DER)
	if _, err := tc.IssueVerified(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"v.svc.corp"}}), Profile: "server"}); err == nil {
		t.Error("IssueVerified accepted a request without ParsedCSR")
	}
	bad, err := ca.ParseCSR(makeCSR(t, csrOpts{dns: []string{"v..svc.corp"}}))
	if err != nil {
		t.Fatal(err)
	}
	var be *ca.ErrBadCSR
	if _, err := tc.IssueVerified(ctx, ca.IssueRequest{ParsedCSR: bad, Profile: "server"}); !errors.As(err, &be) || !contains(be.Rule, "malformed DNS SAN") {
		t.Errorf("malformed name: err %v, want *ErrBadCSR", err)
	}
}

// reserveProbeStore fails ReserveSerial on demand (after the record
// would have gone to disk, as a failed flush does), and lets the signer
// ask whether a serial's record is durable.
type reserveProbeStore struct {
	ca.Store
	failReserve bool
}

func (s *reserveProbeStore) ReserveSerial(ctx context.Context, r ca.Record) error {
	if s.failReserve {
		return errors.New("injected flush failure")
	}
	return s.Store.ReserveSerial(ctx, r)
}

// recordCheckingSigner refuses to sign unless the store holds exactly one
// pending record whose linted copy has the TBSCertificate being signed:
// the issuer key signs only a serial that is on record, and only bytes
// that the record holds.
type recordCheckingSigner struct {
	crypto.Signer
	st         ca.Store
	calls      int
	violations []string
}

func (s *recordCheckingSigner) Sign(r io.Reader, digest []byte, o crypto.SignerOpts) ([]byte, error) {
	s.calls++
	recs, err := s.st.ListCerts(context.Background(), ca.Query{Status: []ca.Status{ca.StatusPending}})
	found := false
	for _, rec := range recs {
		c, perr := x509.ParseCertificate(rec.DER)
		if perr != nil {
			continue
		}
		h := o.HashFunc().New()
		h.Write(c.RawTBSCertificate)
		found = found || bytes.Equal(h.Sum(nil), digest)
	}
	if err != nil || !found {
		s.violations = append(s.violations, fmt.Sprintf("signing bytes that are not on record as pending (%d pending, %v)", len(recs), err))
	}
	return s.Signer.Sign(r, digest, o)
}

// TestSignOnlyAfterRecordAndLint: the record is written while the copy is
// linted; the issuer key signs only once the copy passed the lints and its
// record is durable, and not at all if the record could not be written.
func TestSignOnlyAfterRecordAndLint(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct{ failReserve, overlap bool }{{false, false}, {false, true}, {true, false}, {true, true}} {
		failReserve := tt.failReserve
		t.Run(fmt.Sprintf("failReserve=%v/recordWhileLinting=%v", failReserve, tt.overlap), func(t *testing.T) {
			p := newPKI(t)
			st, err := store.Open(filepath.Join(t.TempDir(), "ca.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			probe := &reserveProbeStore{Store: st, failReserve: failReserve}
			signer := &recordCheckingSigner{Signer: p.interKey, st: st}
			c, err := ca.New(baseConfig(), []ca.Issuer{{Name: "issuing-1", Cert: p.inter, Chain: []*x509.Certificate{p.root}, Signer: signer}}, probe, ca.Options{})
			if err != nil {
				t.Fatal(err)
			}
			ca.SetRecordWhileLinting(c, tt.overlap)
			for i := 0; i < 3; i++ {
				_, err := c.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}}), Profile: "server"})
				if failReserve != (err != nil) {
					t.Fatalf("issue %d: err %v, failReserve %v", i, err, failReserve)
				}
			}
			if len(signer.violations) > 0 {
				t.Errorf("signer: %v", signer.violations)
			}
			if want := 3; !failReserve && signer.calls != want {
				t.Errorf("signer called %d times, want %d", signer.calls, want)
			}
			if failReserve && signer.calls != 0 {
				t.Errorf("signer called %d times although no serial could be recorded", signer.calls)
			}
		})
	}
}

// auditSyncSigner is a module signer fake with ca.AuditSyncer: it counts
// signatures and, at each SyncAudit, how many are covered; onSync, if set,
// runs inside SyncAudit (to look at the store at that moment).
type auditSyncSigner struct {
	crypto.Signer
	signed, covered atomic.Int64
	fail            atomic.Bool
	onSync          func()
}

func (s *auditSyncSigner) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	sig, err := s.Signer.Sign(r, d, o)
	s.signed.Add(1)
	return sig, err
}

func (s *auditSyncSigner) SyncAudit() error {
	if s.onSync != nil {
		s.onSync()
	}
	if s.fail.Load() {
		return errors.New("audit: sync segment: injected failure")
	}
	s.covered.Store(s.signed.Load())
	return nil
}

// A certificate or CRL is stored, and so handed out, only once the audit
// records of the issuer key's signatures are durable (ca.AuditSyncer): the
// sync runs before the store's write, so that a power loss cannot keep a
// stored certificate and lose its signature's record. If the sync fails,
// nothing is stored as issued: the record stays pending, the CRL is not
// the latest.
func TestIssueSyncsAuditBeforeHandingOut(t *testing.T) {
	ctx := context.Background()
	p := newPKI(t)
	st, err := store.Open(filepath.Join(t.TempDir(), "ca.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	signer := &auditSyncSigner{Signer: p.interKey}
	c, err := ca.New(baseConfig(), []ca.Issuer{{Name: "issuing-1", Cert: p.inter, Chain: []*x509.Certificate{p.root}, Signer: signer}}, st, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	valid := func() int {
		recs, err := st.ListCerts(ctx, ca.Query{Status: []ca.Status{ca.StatusValid}})
		if err != nil {
			t.Fatal(err)
		}
		return len(recs)
	}
	latestCRL := func() *big.Int {
		der, err := c.LatestCRL(ctx, "")
		if errors.Is(err, ca.ErrNoCRL) {
			return big.NewInt(0)
		} else if err != nil {
			t.Fatal(err)
		}
		crl, err := x509.ParseRevocationList(der)
		if err != nil {
			t.Fatal(err)
		}
		return crl.Number
	}
	var atSync []string
	signer.onSync = func() { atSync = append(atSync, fmt.Sprintf("valid=%d crl=%v", valid(), latestCRL())) }

	req := ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}}), Profile: "server"}
	if _, err := c.Issue(ctx, req); err != nil {
		t.Fatal(err)
	}
	if s, cv := signer.signed.Load(), signer.covered.Load(); s != 1 || cv != s {
		t.Fatalf("after Issue: %d signatures, %d covered by an audit sync; want 1 and 1", s, cv)
	}
	if _, err := c.GenerateCRL(ctx, ""); err != nil {
		t.Fatal(err)
	}
	if s, cv := signer.signed.Load(), signer.covered.Load(); s != 2 || cv != s {
		t.Fatalf("after GenerateCRL: %d signatures, %d covered by an audit sync; want 2 and 2", s, cv)
	}
	// At the first sync the certificate was not stored as issued yet; at
	// the second the CRL was not the latest yet.
	if want := []string{"valid=0 crl=0", "valid=1 crl=0"}; !slices.Equal(atSync, want) {
		t.Fatalf("store at each audit sync: %v, want %v", atSync, want)
	}

	signer.fail.Store(true)
	cert, err := c.Issue(ctx, req)
	if err == nil || !strings.Contains(err.Error(), "audit record") {
		t.Fatalf("Issue with a failing audit sync: cert %v, err %v; want an error about the audit record", cert != nil, err)
	}
	if n := valid(); n != 1 {
		t.Fatalf("%d certificates stored as issued, want 1: the unaudited one must stay pending", n)
	}
	if der, err := c.GenerateCRL(ctx, ""); err == nil || !strings.Contains(err.Error(), "audit record") {
		t.Fatalf("GenerateCRL with a failing audit sync: %d bytes, err %v; want an error about the audit record", len(der), err)
	}
	if n := latestCRL(); n.Cmp(big.NewInt(1)) != 0 {
		t.Fatalf("latest CRL is number %v, want 1: the unaudited CRL must not be served", n)
	}
}
