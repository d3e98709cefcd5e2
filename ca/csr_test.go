package ca_test

import (
	"context"
	"errors"
	"testing"

	"github.com/hsmca/hsmca/ca"
)

// FuzzParseCSR drives the whole CSR path of Issue (parse, signature, key
// and SAN rules, policy) with arbitrary bytes: it must refuse with a typed
// error, never panic, and never sign what it refused.
func FuzzParseCSR(f *testing.F) {
	tc := newTestCA(f, baseConfig(), ca.Options{})
	f.Add(makeCSR(f, csrOpts{dns: []string{"a.svc.corp"}}))
	f.Add(makeCSR(f, csrOpts{cn: "x", emails: []string{"a@b.corp"}, uris: []string{"spiffe://svc.corp/x"}}))
	f.Add(makeCSR(f, csrOpts{ips: []string{"10.0.0.1"}, dns: []string{"*.svc.corp"}}))
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := ca.ParseCSR(b); err != nil {
			var bad *ca.ErrBadCSR
			if !errors.As(err, &bad) {
				t.Fatalf("ParseCSR error is not ErrBadCSR: %v", err)
			}
		}
		calls := tc.signer.calls.Load()
		c, err := tc.Issue(context.Background(), ca.IssueRequest{CSR: b, Profile: "server"})
		if err != nil {
			var bad *ca.ErrBadCSR
			var pol *ca.ErrPolicy
			var lint *ca.ErrLint
			if !errors.As(err, &bad) && !errors.As(err, &pol) && !errors.As(err, &lint) {
				t.Fatalf("unexpected error class: %v", err)
			}
			if tc.signer.calls.Load() != calls {
				t.Fatal("a refused CSR reached the signer")
			}
			return
		}
		if len(c.DER) == 0 {
			t.Fatal("issued without a certificate")
		}
	})
}
