package ca_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"strings"
	"testing"

	"github.com/hsmca/hsmca/ca"
)

// CheckCSR refuses what Issue would refuse about the CSR (parse,
// signature, key, names, policy) and passes what Issue would issue, with
// no signature and no record either way.
func TestCheckCSR(t *testing.T) {
	tc := policyCA(t, nil)
	good := makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}})
	badSig := append([]byte(nil), good...)
	badSig[len(badSig)-3] ^= 0xff // inside the signature's INTEGERs
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	weak, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "a.svc.corp"}}, p224)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, profile string
		der           []byte
		want          string // part of the error; "" means none
		class         any
	}{
		{name: "good", profile: "server", der: good},
		{name: "unknown profile", profile: "nope", der: good, want: "unknown profile"},
		{name: "empty", profile: "server", der: nil, want: "empty CSR", class: new(*ca.ErrBadCSR)},
		{name: "malformed", profile: "server", der: []byte{0x30, 0x03, 0x02, 0x01, 0x00}, want: "malformed CSR", class: new(*ca.ErrBadCSR)},
		{name: "bad signature", profile: "server", der: badSig, want: "bad signature", class: new(*ca.ErrBadCSR)},
		{name: "key type", profile: "server", der: weak, want: "key type", class: new(*ca.ErrBadCSR)},
		{name: "malformed name", profile: "server", der: makeCSR(t, csrOpts{dns: []string{"a..svc.corp"}}), want: "malformed DNS SAN", class: new(*ca.ErrBadCSR)},
		{name: "policy", profile: "server", der: makeCSR(t, csrOpts{dns: []string{"www.bank.example"}}), want: "www.bank.example", class: new(*ca.ErrPolicy)},
		{name: "policy, kept CN", profile: "client", der: makeCSR(t, csrOpts{cn: "x.secret.svc.corp", dns: []string{"a.svc.corp"}}), want: "x.secret.svc.corp", class: new(*ca.ErrPolicy)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tc.CheckCSR(tt.profile, tt.der)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v; want an error containing %q", err, tt.want)
			}
			switch c := tt.class.(type) {
			case **ca.ErrBadCSR:
				if !errors.As(err, c) {
					t.Fatalf("%v is not an ErrBadCSR", err)
				}
			case **ca.ErrPolicy:
				if !errors.As(err, c) {
					t.Fatalf("%v is not an ErrPolicy", err)
				}
			}
			// Issue refuses it too.
			if _, ierr := tc.Issue(context.Background(), ca.IssueRequest{CSR: tt.der, Profile: tt.profile}); ierr == nil {
				t.Fatal("Issue accepted what CheckCSR refused")
			}
		})
	}
	if n := tc.signer.calls.Load(); n != 0 {
		t.Fatalf("the issuer key signed %d times", n)
	}
	if n := countCerts(t, tc.CA); n != 0 {
		t.Fatalf("%d records", n)
	}
}

// IssueSignatures counts the precertificate of a CT profile.
func TestIssueSignatures(t *testing.T) {
	ctx := context.Background()
	src := &fakeSCTs{t: t, scts: [][]byte{fakeSCT(1), fakeSCT(2)}}
	cfg := ctConfig(ca.CTEmbed)
	cfg.Profiles["server"] = ca.DefaultProfiles()["server"]
	tc := newTestCA(t, cfg, ca.Options{SCTs: src})
	for _, profile := range []string{"server", "ct"} {
		n, err := tc.IssueSignatures(profile)
		if err != nil {
			t.Fatal(err)
		}
		before := tc.signer.calls.Load()
		if _, err := tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}}), Profile: profile}); err != nil {
			t.Fatal(err)
		}
		if used := tc.signer.calls.Load() - before; used != int64(n) {
			t.Errorf("profile %s: IssueSignatures says %d, the issuance took %d", profile, n, used)
		}
	}
	if _, err := tc.IssueSignatures("nope"); !errors.Is(err, ca.ErrUnknownProfile) {
		t.Errorf("unknown profile: %v", err)
	}
}
