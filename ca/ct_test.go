package ca_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"testing"

	"github.com/hsmca/hsmca/ca"
)

var (
	oidPoison  = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 11129, 2, 4, 3}
	oidSCTList = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 11129, 2, 4, 2}
)

// fakeSCTs returns fixed SCT bytes and optionally a policy error; it
// checks the chain it is given like a log would.
type fakeSCTs struct {
	t     *testing.T
	scts  [][]byte
	err   error
	calls int
}

func (f *fakeSCTs) GetSCTs(ctx context.Context, chain [][]byte) ([][]byte, error) {
	f.calls++
	pre, err := x509.ParseCertificate(chain[0])
	if err != nil {
		f.t.Errorf("precertificate does not parse: %v", err)
		return nil, err
	}
	poisoned := false
	for _, e := range pre.Extensions {
		poisoned = poisoned || (e.Id.Equal(oidPoison) && e.Critical && bytes.Equal(e.Value, []byte{5, 0}))
	}
	if !poisoned || len(chain) < 2 {
		f.t.Errorf("chain[0] lacks the critical poison extension or the chain is short (%d)", len(chain))
	}
	if err := pre.CheckSignatureFrom(mustParse(f.t, chain[1])); err != nil {
		f.t.Errorf("precertificate not signed by the issuer: %v", err)
	}
	return f.scts, f.err
}

// fakeSCT is a structurally valid RFC 6962 §3.2 SignedCertificateTimestamp
// (v1, log ID, timestamp, no extensions, ECDSA/SHA-256 signature bytes)
// that no log signed; the ct package verifies real ones.
func fakeSCT(seed byte) []byte {
	b := []byte{0}                                   // version v1
	b = append(b, bytes.Repeat([]byte{seed}, 32)...) // log ID
	b = append(b, 0, 0, 1, 0x90, 0, 0, 0, 0)         // timestamp
	b = append(b, 0, 0)                              // extensions
	sig := []byte{0x30, 0x06, 0x02, 0x01, seed, 0x02, 0x01, seed}
	b = append(b, 4, 3, 0, byte(len(sig)))
	return append(b, sig...)
}

func mustParse(t *testing.T, der []byte) *x509.Certificate {
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ctConfig(mode ca.CTMode) ca.Config {
	cfg := baseConfig()
	p := ca.DefaultProfiles()["server"]
	p.CT = ca.CTConfig{Mode: mode}
	cfg.Profiles = map[string]ca.Profile{"ct": p}
	return cfg
}

func TestCTEmbed(t *testing.T) {
	ctx := context.Background()
	sct1, sct2 := fakeSCT(1), fakeSCT(2)
	src := &fakeSCTs{t: t, scts: [][]byte{sct1, sct2}}
	tc := newTestCA(t, ctConfig(ca.CTEmbed), ca.Options{SCTs: src})
	got, err := tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}}), Profile: "ct"})
	if err != nil {
		t.Fatal(err)
	}
	mustLintClean(t, tc.CA, "ct", got.DER)
	cert := mustParse(t, got.DER)
	var ext []byte
	for _, e := range cert.Extensions {
		if e.Id.Equal(oidPoison) {
			t.Error("final certificate carries the poison")
		}
		if e.Id.Equal(oidSCTList) {
			ext = e.Value
		}
	}
	var list []byte
	if _, err := asn1.Unmarshal(ext, &list); err != nil {
		t.Fatalf("SCT list extension: %v", err)
	}
	n := len(sct1)
	want := append([]byte{byte((2*n + 4) >> 8), byte(2*n + 4), byte(n >> 8), byte(n)}, sct1...)
	want = append(append(want, byte(n>>8), byte(n)), sct2...)
	if !bytes.Equal(list, want) {
		t.Errorf("SCT list encoding %x, want %x", list, want)
	}
	if src.calls != 1 || tc.signer.calls.Load() != 2 {
		t.Errorf("SCT calls %d, signatures %d; want 1 and 2", src.calls, tc.signer.calls.Load())
	}

	// Policy not met: nothing issued, precertificate on record, revocable.
	src.err = errors.New("log A: timeout; log B: bad signature")
	src.scts = [][]byte{sct1}
	_, err = tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"b.svc.corp"}}), Profile: "ct"})
	var cterr *ca.ErrCT
	if !errors.As(err, &cterr) || !contains(err.Error(), "log B: bad signature") {
		t.Fatalf("err %v, want ErrCT naming the log failures", err)
	}
	if _, err := tc.Revoke(ctx, cterr.Serial, ca.ReasonCessationOfOperation); err != nil {
		t.Errorf("revoke precertificate serial: %v", err)
	}
}

func TestCTBestEffort(t *testing.T) {
	src := &fakeSCTs{t: t, err: errors.New("log A: down")}
	tc := newTestCA(t, ctConfig(ca.CTBestEffort), ca.Options{SCTs: src})
	got, err := tc.Issue(context.Background(), ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}}), Profile: "ct"})
	if err != nil {
		t.Fatal(err)
	}
	mustLintClean(t, tc.CA, "ct", got.DER)
	if len(got.CTFailures) != 1 {
		t.Errorf("CT failures %v", got.CTFailures)
	}
	rec, _ := tc.Get(context.Background(), got.Serial)
	if len(rec.CTFailures) != 1 || rec.Status != ca.StatusValid {
		t.Errorf("stored record: %+v", rec)
	}
}

func TestCTNeedsSource(t *testing.T) {
	p := newPKI(t)
	_, err := ca.New(ctConfig(ca.CTEmbed), []ca.Issuer{{Name: "issuing-1", Cert: p.inter, Signer: p.interKey}}, failingStore{}, ca.Options{})
	if err == nil || !contains(err.Error(), "SCT source") {
		t.Fatalf("New without SCT source: %v", err)
	}
}

// minFakeSCTs is fakeSCTs that says at which minimum it stops collecting.
type minFakeSCTs struct {
	*fakeSCTs
	min int
}

func (f minFakeSCTs) MinSCTs() int { return f.min }

// A profile's ct.min_scts is enforced: in embed mode fewer SCTs than it
// asks for refuse the certificate (the precertificate stays on record); in
// best-effort mode the shortfall is recorded. A source that stops at a
// lower minimum could never satisfy it, so the CA refuses to start.
func TestCTProfileMinSCTs(t *testing.T) {
	ctx := context.Background()
	withMin := func(mode ca.CTMode, n int) ca.Config {
		cfg := ctConfig(mode)
		p := cfg.Profiles["ct"]
		p.CT.MinSCTs = n
		cfg.Profiles["ct"] = p
		return cfg
	}
	src := &fakeSCTs{t: t, scts: [][]byte{fakeSCT(1), fakeSCT(2)}}
	tc := newTestCA(t, withMin(ca.CTEmbed, 3), ca.Options{SCTs: src})
	_, err := tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}}), Profile: "ct"})
	var cterr *ca.ErrCT
	if !errors.As(err, &cterr) || !contains(err.Error(), "needs 3 SCTs, got 2") {
		t.Fatalf("embed with 2 of 3 SCTs: %v, want ErrCT naming the shortfall", err)
	}
	tc = newTestCA(t, withMin(ca.CTBestEffort, 3), ca.Options{SCTs: src})
	got, err := tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"b.svc.corp"}}), Profile: "ct"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.CTFailures) != 1 || !contains(got.CTFailures[0], "needs 3 SCTs") {
		t.Fatalf("best-effort with 2 of 3 SCTs recorded %v", got.CTFailures)
	}
	p := newPKI(t)
	_, err = ca.New(withMin(ca.CTEmbed, 3), []ca.Issuer{{Name: "issuing-1", Cert: p.inter, Signer: p.interKey}}, failingStore{},
		ca.Options{SCTs: minFakeSCTs{fakeSCTs: src, min: 2}})
	if err == nil || !contains(err.Error(), "stops at 2") {
		t.Fatalf("New with a profile asking more SCTs than the client collects: %v", err)
	}
}
