package ca

import (
	"bytes"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"time"

	zrsa "github.com/zmap/zcrypto/rsa"
	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"
	"github.com/zmap/zlint/v3/util"
)

// DefaultLintSources are the zlint sources run when a profile's
// LintConfig.Sources is empty: RFC 5280 and the algorithm RFCs it relies
// on, and the CA/Browser Forum Baseline Requirements. See docs/lints.md.
var DefaultLintSources = []string{"RFC5280", "RFC5480", "RFC3279", "RFC8813", "CABF_BR"}

// DefaultLintExclusions are lints that assume the public web PKI and would
// refuse legitimate private names (svc.corp, single-label hosts, RFC 1918
// addresses, internal CRL/AIA hosts). docs/lints.md gives the reason for
// each. LintConfig.KeepPublicWebLints runs them anyway.
var DefaultLintExclusions = []string{
	// TLD and public-suffix checks: .corp, .internal, single labels.
	"e_dnsname_not_valid_tld",
	"e_dnsname_wildcard_left_of_public_suffix",
	"w_dnsname_wildcard_left_of_public_suffix",
	"e_dnsname_contains_bare_iana_suffix",
	"e_san_iana_pub_suffix_empty",
	"w_san_iana_pub_suffix_empty",
	"e_ian_iana_pub_suffix_empty",
	"w_ian_iana_pub_suffix_empty",
	// Reserved (RFC 1918, loopback, ...) IP addresses are normal here.
	"e_ext_san_contains_reserved_ip",
	"e_subject_contains_reserved_ip",
	"e_subject_contains_reserved_arpa_ip",
	// The same for an intermediate's name constraints: a private CA is
	// usually limited to its own networks (permitted_ip: 10.0.0.0/8), the
	// very ranges this lint refuses.
	"e_ext_nc_intersects_reserved_ip",
	// CRL and AIA hosts inside the private network.
	"e_sub_cert_aia_contains_internal_names",
	"w_sub_cert_aia_contains_internal_names",
	"e_aia_contains_internal_names",
	"w_aia_contains_internal_names",
	// RFC 5280 §4.2.1.2 says SHOULD include a subject key identifier in a
	// leaf, BR 7.1.2.7.6 (newer) says NOT RECOMMENDED; we follow the BRs
	// and leave it out, so the RFC 5280 warning is off.
	"w_ext_subject_key_identifier_missing_sub_cert",
}

// keepCNExclusions are turned off for a profile with KeepCN: keeping the
// CN is then the operator's deliberate choice (legacy clients read it),
// and the BRs only discourage it.
var keepCNExclusions = []string{"w_subject_common_name_included"}

// buildRegistry returns the zlint registry a LintConfig selects. It is
// built once per profile (in New), never per issuance.
func buildRegistry(lc LintConfig, keepCN bool) (lint.Registry, error) {
	global := lint.GlobalRegistry()
	sources := lc.Sources
	if len(sources) == 0 {
		sources = DefaultLintSources
	}
	srcSet := map[lint.LintSource]bool{}
	known := map[lint.LintSource]bool{}
	for _, s := range global.Sources() {
		known[s] = true
	}
	for _, s := range sources {
		var ls lint.LintSource
		ls.FromString(s)
		if ls == lint.UnknownLintSource || !known[ls] {
			return nil, fmt.Errorf("unknown zlint source %q", s)
		}
		srcSet[ls] = true
	}
	exclude := map[string]bool{}
	if !lc.KeepPublicWebLints {
		for _, n := range DefaultLintExclusions {
			exclude[n] = true
		}
	}
	if keepCN {
		for _, n := range keepCNExclusions {
			exclude[n] = true
		}
	}
	for _, n := range lc.Exclude {
		if global.ByName(n) == nil {
			return nil, fmt.Errorf("unknown zlint lint %q in exclude", n)
		}
		exclude[n] = true
	}
	include := map[string]bool{}
	for _, n := range lc.Include {
		if global.ByName(n) == nil {
			return nil, fmt.Errorf("unknown zlint lint %q in include", n)
		}
		include[n] = true
	}
	var names []string
	certLints := global.CertificateLints()
	for _, n := range global.Names() {
		l := certLints.ByName(n)
		if l == nil {
			continue // CRL and OCSP lints
		}
		if include[n] || (srcSet[l.Source] && !exclude[n]) {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("the lint selection is empty")
	}
	return global.Filter(lint.FilterOptions{IncludeNames: names})
}

// LintNames returns the names of the zlint lints run for profile (for docs
// and `hsmca ca lints`), or ErrUnknownProfile.
func (c *CA) LintNames(profile string) ([]string, error) {
	ps, ok := c.profiles[profile]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownProfile, profile)
	}
	names := ps.registry.Names()
	sort.Strings(names)
	return names, nil
}

// lint runs zlint and hsmca's own checks over a certificate signed by the
// throwaway key, returning every finding at warning level or above.
func (c *CA) lint(ps *profileState, iss *issuerState, zc *zx509.Certificate, ids identifiers) []LintResult {
	out := ps.linters.run(zc)
	out = append(out, ownChecks(ps, iss, zc, ids, c.clock())...)
	sort.Slice(out, func(i, j int) bool { return out[i].Lint < out[j].Lint })
	return out
}

// reusableLints are zlint v3 certificate lints whose implementation
// structs have fields, reviewed (zlint v3.7.3) to be set only by the lint's
// constructor or Configure and only read by CheckApplies and Execute, so
// one configured instance can serve every certificate, concurrently.
// Lints with fields that are not listed are built afresh for each
// certificate, as zlint does.
var reusableLints = map[string]bool{
	"e_dnsname_bad_character_in_label":   true, // compiled regexp
	"w_rsa_public_exponent_not_in_range": true, // *big.Int bound, only compared
	"e_ca_common_name_missing":           true, // *CABFBaselineRequirementsConfig
	"e_ca_country_name_invalid":          true,
	"e_ca_country_name_missing":          true,
	"e_ca_organization_name_missing":     true,
	"e_ca_multiple_reserved_policy_oids": true, // CrossCert bool
	"e_subj_orgunit_in_ca_cert":          true,
}

// certLinter is one selected zlint certificate lint, prepared once.
type certLinter struct {
	l *lint.CertificateLint
	// shared is the configured instance used for every certificate, or
	// nil when each certificate needs a fresh one.
	shared lint.CertificateLintInterface
	config lint.Configuration
}

// certLinters runs the lints of a registry directly, with the semantics of
// zlint.LintCertificateEx (framework filter by source, Configure,
// CheckApplies, CheckEffective, Execute, a panic becomes a fatal result)
// but without its per-certificate costs that do not lint anything: a new
// instance and a reflective Configure of every lint, a result map with
// every lint's metadata, the framework's applicability tests repeated per
// lint. Only warnings, errors and fatals are reported.
type certLinters []certLinter

// newCertLinters prepares every certificate lint of reg.
func newCertLinters(reg lint.Registry) (certLinters, error) {
	cfg := reg.GetConfiguration()
	var out certLinters
	for _, l := range reg.CertificateLints().Lints() {
		cl := certLinter{l: l, config: cfg}
		inst := l.Lint()
		_, configurable := inst.(lint.Configurable)
		if reusableLints[l.Name] || (!configurable && statelessLint(inst)) {
			if err := cfg.MaybeConfigure(inst, l.Name); err != nil {
				return nil, fmt.Errorf("configure zlint lint %s: %w", l.Name, err)
			}
			cl.shared = inst
		}
		out = append(out, cl)
	}
	return out, nil
}

// statelessLint reports whether a lint's implementation has no state at
// all: a pointer to an empty struct.
func statelessLint(inst lint.CertificateLintInterface) bool {
	t := reflect.TypeOf(inst)
	return t != nil && t.Kind() == reflect.Pointer && t.Elem().Kind() == reflect.Struct && t.Elem().Size() == 0
}

// certFacts are zlint's framework applicability tests, made once per
// certificate instead of once per lint.
type certFacts struct {
	serverAuth, emailProtection, codeSigning bool
}

func certFactsOf(c *zx509.Certificate) certFacts {
	return certFacts{
		serverAuth:      util.IsServerAuthCert(c),
		emailProtection: util.IsEmailProtectionCert(c),
		codeSigning:     util.IsCodeSigning(c.PolicyIdentifiers),
	}
}

// run lints c and returns the warnings, errors and fatals.
func (ls certLinters) run(c *zx509.Certificate) []LintResult {
	facts := certFactsOf(c)
	var out []LintResult
	for i := range ls {
		if r := ls[i].execute(c, &facts); r.Status >= lint.Warn {
			out = append(out, LintResult{Lint: ls[i].l.Name, Status: r.Status.String(), Details: r.Details})
		}
	}
	return out
}

// notApplicable stands for zlint's NA and NE results, which report
// nothing; never modified.
var notApplicable = &lint.LintResult{Status: lint.NA}

// execute is zlint's (*lint.CertificateLint).Execute with the framework
// facts precomputed and the instance reused where that is safe.
func (cl *certLinter) execute(c *zx509.Certificate, f *certFacts) (res *lint.LintResult) {
	defer func() {
		if err := recover(); err != nil {
			res = &lint.LintResult{Status: lint.Fatal, Details: fmt.Sprintf("'%s' panicked. Error: %v", cl.l.Name, err)}
		}
	}()
	if !cl.l.OverrideFrameworkFilter {
		switch {
		case cl.l.Source == lint.CABFBaselineRequirements && !f.serverAuth,
			cl.l.Source == lint.CABFSMIMEBaselineRequirements && !f.emailProtection,
			cl.l.Source == lint.CABFCSBaselineRequirements && !f.codeSigning:
			return notApplicable
		}
	}
	impl := cl.shared
	if impl == nil {
		impl = cl.l.Lint()
		if err := cl.config.MaybeConfigure(impl, cl.l.Name); err != nil {
			return &lint.LintResult{Status: lint.Fatal, Details: err.Error()}
		}
	}
	if !impl.CheckApplies(c) || !cl.l.CheckEffective(c) {
		return notApplicable
	}
	if res = impl.Execute(c); res == nil {
		// zlint itself would crash on this; refuse the certificate.
		res = &lint.LintResult{Status: lint.Fatal, Details: "lint returned no result"}
	}
	return res
}

// ownChecks are the checks zlint cannot make because they need the
// request, the profile or the issuer. They read the linted copy as zcrypto
// parsed it for zlint, so the encoded certificate is parsed only once; now
// is the time of issuance.
func ownChecks(ps *profileState, iss *issuerState, cert *zx509.Certificate, ids identifiers, now time.Time) []LintResult {
	var out []LintResult
	bad := func(name, format string, args ...any) {
		out = append(out, LintResult{Lint: name, Status: "error", Details: fmt.Sprintf(format, args...)})
	}
	if cert.NotBefore.Before(iss.Cert.NotBefore) || cert.NotAfter.After(iss.Cert.NotAfter) {
		bad("hsmca_validity_within_issuer", "validity %s..%s is outside the issuer's %s..%s",
			cert.NotBefore, cert.NotAfter, iss.Cert.NotBefore, iss.Cert.NotAfter)
	}
	// At most Validity from the time of issuance on, plus the part of the
	// window before it, up to Backdate: a window that starts later (a
	// requested notBefore) gets no backdate on top of Validity.
	back := min(max(now.Sub(cert.NotBefore), 0), ps.p.Backdate.D())
	if limit := ps.p.Validity.D() + back; cert.NotAfter.Sub(cert.NotBefore) > limit {
		bad("hsmca_validity_within_profile", "validity %v exceeds the profile's %v (validity %v, backdate %v of up to %v)",
			cert.NotAfter.Sub(cert.NotBefore), limit, ps.p.Validity.D(), back, ps.p.Backdate.D())
	}
	if kt, err := zKeyType(cert.PublicKey); err != nil || !ps.keyTypes[kt] {
		bad("hsmca_key_type_allowed", "subject key type %s is not allowed by profile %s", kt, ps.name)
	}
	if cert.IsCA {
		bad("hsmca_not_ca", "a profile certificate must not be a CA")
	}
	if !bytes.Equal(cert.RawIssuer, iss.Cert.RawSubject) {
		bad("hsmca_issuer_name", "issuer name differs from the issuer certificate's subject")
	}
	if !bytes.Equal(cert.AuthorityKeyId, iss.Cert.SubjectKeyId) {
		bad("hsmca_authority_key_id", "authority key identifier differs from the issuer's subject key identifier")
	}
	if ps.server && len(cert.DNSNames)+len(cert.IPAddresses) == 0 {
		bad("hsmca_server_names", "a server certificate needs at least one DNS name or IP address")
	}
	got := make([]string, 0, len(cert.DNSNames)+len(cert.IPAddresses)+len(cert.EmailAddresses)+len(cert.URIs))
	got = append(got, cert.DNSNames...)
	for _, ip := range cert.IPAddresses {
		got = append(got, ip.String())
	}
	got = append(got, cert.EmailAddresses...)
	got = append(got, cert.URIs...)
	want := ids.strings()
	if !slices.Equal(got, want) {
		bad("hsmca_names_match_request", "certificate names %v differ from the checked request names %v", got, want)
	}
	if n := len(cert.OtherNames) + len(cert.DirectoryNames) + len(cert.EDIPartyNames) + len(cert.RegisteredIDs) + len(cert.FailedToParseNames); n > 0 {
		bad("hsmca_names_match_request", "certificate carries %d subject alternative names of kinds hsmca never issues", n)
	}
	if n := len(got); n > ps.p.MaxSANs {
		bad("hsmca_max_sans", "%d names exceed the profile's %d", n, ps.p.MaxSANs)
	}
	return out
}

// zKeyType is keyTypeOf for a public key as zcrypto parses it.
func zKeyType(pub any) (string, error) {
	switch k := pub.(type) {
	case *zx509.AugmentedECDSA:
		return keyTypeOf(k.Pub)
	case *zrsa.PublicKey: // zcrypto's RSA key type, with a big.Int exponent
		return fmt.Sprintf("rsa-%d", k.N.BitLen()), nil
	}
	return keyTypeOf(pub)
}

// crlLintExclusions are CRL lints hsmca does not run: BR 7.2.2 forbids
// certificateHold (and aACompromise, privilegeWithdrawn for some versions)
// in public TLS CRLs, but hsmca supports RFC 5280 §5.3.1 holds.
var crlLintExclusions = map[string]bool{"e_cab_crl_has_valid_reason_code": true}

// buildCRLRegistry selects zlint's CRL lints from the RFC 5280 and BR
// sources; built once in New.
func buildCRLRegistry() (lint.Registry, error) {
	global := lint.GlobalRegistry()
	crlLints := global.RevocationListLints()
	var names []string
	for _, n := range global.Names() {
		if l := crlLints.ByName(n); l != nil && !crlLintExclusions[n] && (l.Source == lint.RFC5280 || l.Source == lint.CABFBaselineRequirements) {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("ca: no CRL lints found in zlint")
	}
	return global.Filter(lint.FilterOptions{IncludeNames: names})
}

// lintCRL runs the CRL lints over a CRL signed by the throwaway key.
func (c *CA) lintCRL(der []byte) []LintResult {
	zl, err := zx509.ParseRevocationList(der)
	if err != nil {
		return []LintResult{{Lint: "hsmca_zcrypto_parse_crl", Status: "fatal", Details: err.Error()}}
	}
	var out []LintResult
	for name, r := range zlint.LintRevocationListEx(zl, c.crlRegistry).Results {
		if r.Status >= lint.Warn {
			out = append(out, LintResult{Lint: name, Status: r.Status.String(), Details: r.Details})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Lint < out[j].Lint })
	return out
}
