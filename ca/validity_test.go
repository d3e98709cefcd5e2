package ca_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hsmca/hsmca/ca"
)

// A requested window is at most the profile's validity, counted from the
// requested notBefore or, with only a notAfter, from the time of issuance:
// the backdate is not added on top. A notAfter in the past says so.
func TestRequestedValidityCappedAtProfile(t *testing.T) {
	now := time.Date(2027, 1, 1, 12, 0, 0, 0, time.UTC)
	tc := newTestCA(t, baseConfig(), ca.Options{Clock: func() time.Time { return now }})
	const day = 24 * time.Hour
	tests := []struct {
		name           string
		nb, na         time.Time
		want           string // part of the ErrBadRequest; "" means issued
		wantNB, wantNA time.Time
	}{
		{name: "validity plus backdate", nb: now.Add(time.Minute), na: now.Add(time.Minute + 90*day + time.Hour), want: "exceeds the profile's 2160h0m0s"},
		{name: "one second too long", nb: now.Add(time.Minute), na: now.Add(time.Minute + 90*day + time.Second), want: "exceeds the profile's"},
		{name: "notAfter alone too far", na: now.Add(90*day + time.Minute), want: "exceeds the profile's"},
		{name: "notAfter in the past", nb: now.Add(-30 * time.Minute), na: now.Add(-10 * time.Minute), want: "requested notAfter 2027-01-01T11:50:00Z is in the past"},
		{name: "notAfter alone in the past", na: now.Add(-10 * time.Minute), want: "is in the past"},
		{name: "whole validity", nb: now.Add(time.Minute), na: now.Add(time.Minute + 90*day), wantNB: now.Add(time.Minute), wantNA: now.Add(time.Minute + 90*day)},
		{name: "notAfter alone", na: now.Add(90 * day), wantNB: now.Add(-time.Hour), wantNA: now.Add(90 * day)},
		{name: "notBefore alone", nb: now.Add(time.Hour), wantNB: now.Add(time.Hour), wantNA: now.Add(time.Hour + 90*day - time.Second)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := tc.signer.calls.Load()
			got, err := tc.Issue(context.Background(), ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}}), Profile: "server", NotBefore: tt.nb, NotAfter: tt.na})
			if tt.want != "" {
				if !errors.Is(err, ca.ErrBadRequest) || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("got %v; want ErrBadRequest saying %q", err, tt.want)
				}
				if tc.signer.calls.Load() != calls {
					t.Fatal("a refused request reached the signer")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !got.NotBefore.Equal(tt.wantNB) || !got.NotAfter.Equal(tt.wantNA) {
				t.Errorf("window %s..%s, want %s..%s", got.NotBefore, got.NotAfter, tt.wantNB, tt.wantNA)
			}
			mustLintClean(t, tc.CA, "server", got.DER)
		})
	}
}
