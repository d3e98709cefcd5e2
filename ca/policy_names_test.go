package ca_test

import (
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"testing"

	"github.com/hsmca/hsmca/ca"
)

// policyCA allows names under svc.corp and denies secret.svc.corp.
func policyCA(t *testing.T, mut func(*ca.Config)) *testCA {
	t.Helper()
	cfg := baseConfig()
	cfg.Policy = ca.NamePolicy{AllowedDNSSuffixes: []string{"svc.corp"}, DeniedDNSSuffixes: []string{"secret.svc.corp"}}
	if mut != nil {
		mut(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return newTestCA(t, cfg, ca.Options{})
}

func wantPolicyRefusal(t *testing.T, err error, name string) {
	t.Helper()
	var pe *ca.ErrPolicy
	if !errors.As(err, &pe) || !strings.Contains(pe.Name, name) {
		t.Fatalf("got %v; want a policy refusal naming %s", err, name)
	}
}

// A URI SAN answers to the DNS or IP rules through its host; a URI with no
// host cannot be placed under an allowed suffix.
func TestPolicyChecksURIHosts(t *testing.T) {
	tc := policyCA(t, nil)
	ctx := context.Background()
	for _, u := range []string{"https://secret.svc.corp/", "spiffe://bank.example/admin", "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66"} {
		_, err := tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{uris: []string{u}}), Profile: "client"})
		wantPolicyRefusal(t, err, u)
	}
	if _, err := tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{uris: []string{"spiffe://svc.corp/ns/web"}}), Profile: "client"}); err != nil {
		t.Fatalf("URI under an allowed suffix: %v", err)
	}
}

// A common name kept in a profile that does not make it a SAN still names
// a host, an address or a mailbox: the policy checks it too.
func TestPolicyChecksKeptCommonName(t *testing.T) {
	tc := policyCA(t, nil)
	ctx := context.Background()
	for _, cn := range []string{"secret.svc.corp", "www.bank.example"} {
		_, err := tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{cn: cn}), Profile: "client"})
		wantPolicyRefusal(t, err, cn)
	}
	if _, err := tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{cn: "Jane Doe", dns: []string{"jane.svc.corp"}}), Profile: "client"}); err != nil {
		t.Fatalf("a free-text common name: %v", err)
	}
}

// An issuance for requested names (ACME's finalize) refuses a CSR that
// adds email addresses or URIs, names the request never had.
func TestRequestedNamesRefuseOtherKinds(t *testing.T) {
	tc := policyCA(t, func(c *ca.Config) {
		c.Profiles = map[string]ca.Profile{"mixed": {ExtKeyUsages: []string{"serverAuth", "clientAuth"}, SANTypes: []string{"dns", "email", "uri"},
			Lints: ca.LintConfig{Sources: []string{"RFC5280"}}}}
	})
	_, err := tc.Issue(context.Background(), ca.IssueRequest{Profile: "mixed", Names: []string{"a.svc.corp"},
		CSR: makeCSR(t, csrOpts{dns: []string{"a.svc.corp"}, emails: []string{"ceo@svc.corp"}, uris: []string{"spiffe://svc.corp/admin"}})})
	var bad *ca.ErrBadCSR
	if !errors.As(err, &bad) || !strings.Contains(bad.Rule, "email addresses or URIs") {
		t.Fatalf("got %v; want a bad-CSR refusal of the extra names", err)
	}
}

// Policy entries that could never match a name as certificates carry it
// (a wildcard, a Unicode IDN, a non-LDH label) are refused when the CA is
// built, instead of silently denying nothing; a trailing dot is dropped.
func TestPolicyEntriesChecked(t *testing.T) {
	for _, entry := range []string{"*.wild.svc.corp", "bücher.svc.corp", "bad_label.svc.corp"} {
		cfg := baseConfig()
		cfg.Policy = ca.NamePolicy{DeniedDNSSuffixes: []string{entry}}
		if err := cfg.Validate(); err != nil {
			continue // refused at validation: fine too
		}
		p := newPKI(t)
		iss := ca.Issuer{Name: "issuing-1", Cert: p.inter, Chain: []*x509.Certificate{p.root}, Signer: p.interKey}
		if _, err := ca.New(cfg, []ca.Issuer{iss}, newMemStore(), ca.Options{}); err == nil {
			t.Errorf("denied suffix %q accepted", entry)
		}
	}
	tc := policyCA(t, func(c *ca.Config) { c.Policy.DeniedDNSSuffixes = []string{"secret.svc.corp."} })
	_, err := tc.Issue(context.Background(), ca.IssueRequest{CSR: makeCSR(t, csrOpts{dns: []string{"a.secret.svc.corp"}}), Profile: "server"})
	wantPolicyRefusal(t, err, "a.secret.svc.corp")
}
