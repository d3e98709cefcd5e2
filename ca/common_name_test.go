package ca_test

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/hsmca/hsmca/ca"
)

// A kept common name that reads as a name once trailing dots, surrounding
// space and case are set aside must be written in the name's canonical
// form, up to the case of a DNS name or mail domain: otherwise the policy
// would read it as free text and a client as the name. Canonical names go
// through the policy (lower-cased); free text does not.
func TestKeptCommonNameCanonicalForm(t *testing.T) {
	tc := policyCA(t, func(c *ca.Config) { c.Policy.AllowedEmailDomains = []string{"svc.corp"} })
	ctx := context.Background()
	tests := []struct {
		cn     string
		bad    string // a refusal as a bad CSR whose rule contains this
		policy string // a policy refusal naming this
	}{
		{cn: "www.bank.example.", bad: `use "www.bank.example"`},
		{cn: "secret.svc.corp.", bad: `use "secret.svc.corp"`},
		{cn: "secret.svc.corp..", bad: `use "secret.svc.corp"`},
		{cn: "Secret.Svc.Corp.", bad: `use "secret.svc.corp"`},
		{cn: " jane.svc.corp", bad: `use "jane.svc.corp"`},
		{cn: "payroll.", bad: `use "payroll"`},
		{cn: "admin@bank.example.", bad: `use "admin@bank.example"`},
		{cn: "admin@Svc.Corp ", bad: `use "admin@svc.corp"`},
		{cn: "10.0.0.1.", bad: `use "10.0.0.1"`},
		{cn: "FD00::1", bad: `use "fd00::1"`},
		{cn: "::ffff:10.0.0.1", bad: `use "10.0.0.1"`},
		{cn: "010.0.0.1", bad: "reads as an IP address but is not one"},
		{cn: "10.1", bad: "reads as an IP address but is not one"},
		{cn: "10.1.", bad: "reads as an IP address but is not one"},
		{cn: "0xa.1", bad: "reads as an IP address but is not one"},
		{cn: "1.0xa", bad: "reads as an IP address but is not one"},
		{cn: "0XA.0.0.1", bad: "reads as an IP address but is not one"},
		{cn: "10.0.258", bad: "reads as an IP address but is not one"},
		{cn: "10.0.0.0377", bad: "reads as an IP address but is not one"},
		// Canonical names answer to the policy.
		{cn: "www.bank.example", policy: "www.bank.example"},
		{cn: "a.secret.svc.corp", policy: "a.secret.svc.corp"},
		{cn: "admin@bank.example", policy: "admin@bank.example"},
		// Case hides nothing: the policy checks the lower-cased name.
		{cn: "Secret.Svc.Corp", policy: "secret.svc.corp"},
		{cn: "WWW.Bank.Example", policy: "www.bank.example"},
		{cn: "admin@Bank.Example", policy: "admin@bank.example"},
		{cn: "John.Smith", policy: "john.smith"},
		// And names the policy allows, and free text, are kept as written.
		{cn: "jane.svc.corp"},
		{cn: "Jane@svc.corp"},
		{cn: "10.0.0.1"},
		{cn: "Jane.Svc.Corp"},
		{cn: "admin@Svc.Corp"},
		{cn: "Jane Doe"},
		{cn: "payroll"},
		{cn: "Jane Doe <jane@bank.example>"},
	}
	for _, tt := range tests {
		t.Run(tt.cn, func(t *testing.T) {
			calls := tc.signer.calls.Load()
			got, err := tc.Issue(ctx, ca.IssueRequest{CSR: makeCSR(t, csrOpts{cn: tt.cn, dns: []string{"jane.svc.corp"}}), Profile: "client"})
			switch {
			case tt.bad != "":
				var bad *ca.ErrBadCSR
				if !errors.As(err, &bad) || !strings.Contains(bad.Rule, tt.bad) || !strings.Contains(bad.Rule, tt.cn) {
					t.Fatalf("got %v; want a bad-CSR refusal naming %q and saying %s", err, tt.cn, tt.bad)
				}
			case tt.policy != "":
				wantPolicyRefusal(t, err, tt.policy)
			default:
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				c, err := x509.ParseCertificate(got.DER)
				if err != nil {
					t.Fatal(err)
				}
				if c.Subject.CommonName != tt.cn {
					t.Fatalf("subject CN %q, want %q as written", c.Subject.CommonName, tt.cn)
				}
				mustLintClean(t, tc.CA, "client", got.DER)
				return
			}
			if tc.signer.calls.Load() != calls {
				t.Fatal("a refused CSR reached the signer")
			}
		})
	}
}

// An issuance for requested names (ACME) matches the names of a common name
// kept by a profile that does not copy it into the SANs too.
func TestRequestedNamesIncludeKeptCommonName(t *testing.T) {
	cfg := baseConfig()
	cfg.Profiles = map[string]ca.Profile{"mtls": {ExtKeyUsages: []string{"clientAuth"}, KeepCN: true, SANTypes: []string{"dns", "ip"},
		Lints: ca.LintConfig{Sources: []string{"RFC5280"}}}}
	tc := newTestCA(t, cfg, ca.Options{})
	ctx := context.Background()
	parse := func(der []byte) *x509.CertificateRequest {
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			t.Fatal(err)
		}
		return csr
	}
	tests := []struct {
		name  string
		cn    string
		names []string
		want  string // "" means issued
	}{
		{name: "unrequested DNS name", cn: "admin.svc.corp", names: []string{"a.svc.corp"}, want: "admin.svc.corp which the request does not"},
		{name: "unrequested address", cn: "10.0.0.9", names: []string{"a.svc.corp"}, want: "10.0.0.9 which the request does not"},
		{name: "email address", cn: "ceo@svc.corp", names: []string{"a.svc.corp"}, want: "is an email address"},
		{name: "requested", cn: "admin.svc.corp", names: []string{"a.svc.corp", "admin.svc.corp"}},
		{name: "free text", cn: "web frontend", names: []string{"a.svc.corp"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := ca.IssueRequest{ParsedCSR: parse(makeCSR(t, csrOpts{cn: tt.cn, dns: []string{"a.svc.corp"}})), Profile: "mtls", Names: tt.names}
			got, err := tc.IssueVerified(ctx, req)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				c, _ := x509.ParseCertificate(got.DER)
				if c.Subject.CommonName != tt.cn {
					t.Fatalf("subject CN %q, want %q", c.Subject.CommonName, tt.cn)
				}
				return
			}
			var bad *ca.ErrBadCSR
			if !errors.As(err, &bad) || !strings.Contains(bad.Rule, tt.want) {
				t.Fatalf("got %v; want a bad-CSR refusal containing %q", err, tt.want)
			}
		})
	}
}

// In a server profile the CN is one of the SANs, and the subject carries
// it in the SAN's form, so e_subject_common_name_not_exactly_from_san
// passes for a CSR whose CN is upper case or a non-canonical address.
func TestServerCommonNameTakesSANForm(t *testing.T) {
	tc := newTestCA(t, baseConfig(), ca.Options{})
	for _, tt := range []struct{ cn, want string }{
		{"Web.Svc.Corp", "web.svc.corp"},
		{"FD00::1", "fd00::1"},
		{"fd00:0::1", "fd00::1"},
		{"::ffff:10.0.0.1", "10.0.0.1"},
		{"web.svc.corp", "web.svc.corp"},
	} {
		t.Run(tt.cn, func(t *testing.T) {
			got, err := tc.Issue(context.Background(), ca.IssueRequest{CSR: makeCSR(t, csrOpts{cn: tt.cn}), Profile: "server"})
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			c, err := x509.ParseCertificate(got.DER)
			if err != nil {
				t.Fatal(err)
			}
			if c.Subject.CommonName != tt.want {
				t.Errorf("subject CN %q, want %q", c.Subject.CommonName, tt.want)
			}
			var sans []string
			sans = append(sans, c.DNSNames...)
			for _, ip := range c.IPAddresses {
				sans = append(sans, ip.String())
			}
			if len(sans) != 1 || sans[0] != tt.want {
				t.Errorf("SANs %v, want [%s]", sans, tt.want)
			}
			if ip := net.ParseIP(tt.want); ip != nil && ip.To4() != nil && len(c.IPAddresses[0]) != net.IPv4len {
				t.Errorf("IPv4 SAN encoded in %d bytes", len(c.IPAddresses[0]))
			}
			mustLintClean(t, tc.CA, "server", got.DER)
		})
	}
}

// Free-text common names kept by a client profile: version- or build-like
// names whose last label is a number but which inet_aton does not read as
// an address, besides names without a dot. They are kept as written and
// answer to no name policy (the policy here allows only names under
// svc.corp).
func TestKeptCommonNameFreeText(t *testing.T) {
	tc := policyCA(t, func(c *ca.Config) { c.Policy.AllowedEmailDomains = []string{"svc.corp"} })
	for _, cn := range []string{
		"Jane Doe", "payroll", "Payroll", "12345",
		"agent-1.2", "v1.0", "build.7", "Build.7", "release.2024", "1.2.3.4.5", "300.1", "1.2.3.256", "08.1", "0x.1",
	} {
		t.Run(cn, func(t *testing.T) { mustKeepCN(t, tc, cn) })
	}
}

// A kept common name that is a DNS name or mailbox in other case than
// lower ("John.Smith", a person's name with a dot and capitals) is kept as
// written in a client profile; the name policy checks it lower-cased
// (TestKeptCommonNameCanonicalForm).
func TestKeptCommonNameCase(t *testing.T) {
	tc := newTestCA(t, baseConfig(), ca.Options{})
	for _, cn := range []string{"John.Smith", "Mary.Ann.Jones", "jane@Svc.Corp", "Web.Svc.Corp"} {
		t.Run(cn, func(t *testing.T) { mustKeepCN(t, tc, cn) })
	}
}

func mustKeepCN(t *testing.T, tc *testCA, cn string) {
	t.Helper()
	got, err := tc.Issue(context.Background(), ca.IssueRequest{CSR: makeCSR(t, csrOpts{cn: cn, emails: []string{"jane@svc.corp"}}), Profile: "client"})
	if err != nil {
		t.Fatalf("refused: %v", err)
	}
	c, err := x509.ParseCertificate(got.DER)
	if err != nil {
		t.Fatal(err)
	}
	if c.Subject.CommonName != cn {
		t.Fatalf("subject CN %q, want %q as written", c.Subject.CommonName, cn)
	}
	mustLintClean(t, tc.CA, "client", got.DER)
}
