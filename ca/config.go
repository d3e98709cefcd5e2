package ca

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the CA section of hsmca's configuration. It decodes from YAML
// strictly (DecodeConfig) and every optional field has a usable zero value.
//
// Example (see testdata/ca/ca.yaml):
//
//	issuers:
//	  - name: issuing-1
//	    certificate: intermediate-1.pem
//	    chain: root.pem
//	    partition: issuing
//	    key: intermediate-1
//	default_issuer: issuing-1
//	policy:
//	  allowed_dns_suffixes: [svc.corp, example.internal]
//	urls:
//	  crl_base: http://pki.svc.corp/crl
//	  aia_base: http://pki.svc.corp/issuer
//	  ocsp: http://pki.svc.corp/ocsp
//	profiles:
//	  server: {validity: 90d}
type Config struct {
	// Issuers lists the issuing CAs. At least one is required.
	Issuers []IssuerConfig `yaml:"issuers"`
	// DefaultIssuer names the issuer used when a request names none; empty
	// means the first of Issuers.
	DefaultIssuer string `yaml:"default_issuer,omitempty"`
	// Profiles are added to DefaultProfiles. A profile named like a
	// default (server, client, operator) starts from it: fields left empty
	// keep the default's values, except the booleans keep_cn and
	// allow_not_before_not_after, which are taken as written (false when
	// absent). Other profiles' empty fields take the defaults described on
	// Profile.
	Profiles map[string]Profile `yaml:"profiles,omitempty"`
	// Policy is the CA-wide name policy. A name must pass both this and the
	// profile's policy.
	Policy NamePolicy `yaml:"policy,omitempty"`
	// URLs are put into every certificate and CRL.
	URLs URLs `yaml:"urls,omitempty"`
	// CRL configures CRL generation.
	CRL CRLConfig `yaml:"crl,omitempty"`
	// OCSP configures the OCSP responder.
	OCSP OCSPConfig `yaml:"ocsp,omitempty"`
}

// IssuerConfig names an issuing CA: its certificate (from a ceremony) and
// where its key lives. Relative paths are relative to the config file.
type IssuerConfig struct {
	// Name identifies the issuer in requests, CRL and AIA paths; it must
	// be a simple token ([A-Za-z0-9._-]).
	Name string `yaml:"name"`
	// Certificate is the PEM file holding the issuer certificate.
	Certificate string `yaml:"certificate"`
	// Chain is an optional PEM file with the certificates above the issuer,
	// up to and including the root.
	Chain string `yaml:"chain,omitempty"`
	// Partition and Key (label or ID) locate the signing key in the HSM
	// module. ca never reads them: the CLI resolves them to a crypto.Signer.
	Partition string `yaml:"partition,omitempty"`
	Key       string `yaml:"key,omitempty"`
}

// Profile is a certificate profile. Zero fields take defaults: Validity
// 90d, Backdate 1h, KeyUsages [digitalSignature], AllowedKeyTypes
// DefaultKeyTypes (no Ed25519), MaxSANs 100, SANTypes [dns, ip], Lints the RFC 5280 and
// CA/B BR sources minus the public-web lints (see docs/lints.md).
type Profile struct {
	// Description is shown in ACME meta.profiles and help texts.
	Description string `yaml:"description,omitempty"`
	// Validity is NotAfter - NotBefore, not counting Backdate.
	Validity Duration `yaml:"validity,omitempty"`
	// Backdate moves NotBefore into the past to absorb clock skew.
	Backdate Duration `yaml:"backdate,omitempty"`
	// KeyUsages: digitalSignature, keyEncipherment, keyAgreement,
	// contentCommitment, dataEncipherment. Each certificate gets those its
	// subject key can serve: keyEncipherment and dataEncipherment only for
	// RSA keys (RFC 5280 §4.2.1.3, BR 7.1.2.7.11, RFC 5480 §3),
	// keyAgreement only for ECDSA keys; an Ed25519 key gets only
	// digitalSignature and contentCommitment (RFC 8410 §5).
	KeyUsages []string `yaml:"key_usages,omitempty"`
	// ExtKeyUsages: serverAuth, clientAuth, codeSigning, emailProtection,
	// timeStamping, ocspSigning.
	ExtKeyUsages []string `yaml:"ext_key_usages,omitempty"`
	// AllowedKeyTypes lists subject key types: ecdsa-p256, ecdsa-p384,
	// ecdsa-p521, rsa-2048, rsa-3072, rsa-4096, ed25519.
	AllowedKeyTypes []string `yaml:"allowed_key_types,omitempty"`
	// SANTypes lists the SAN kinds a CSR may ask for: dns, ip, email, uri.
	SANTypes []string `yaml:"san_types,omitempty"`
	// MaxSANs bounds the number of subject alternative names.
	MaxSANs int `yaml:"max_sans,omitempty"`
	// KeepCN keeps the CSR's common name in the subject. For a profile
	// with serverAuth the CN must be one of the DNS/IP names (it is added
	// to them if absent); otherwise it is copied as is.
	KeepCN bool `yaml:"keep_cn,omitempty"`
	// AllowNotBeforeNotAfter lets a request (ACME newOrder) choose its own
	// validity window within Validity: NotAfter - NotBefore at most
	// Validity, measured from the requested NotBefore, or from the time of
	// issuance when only NotAfter is given (Backdate then still applies).
	AllowNotBeforeNotAfter bool `yaml:"allow_not_before_not_after,omitempty"`
	// Policy is this profile's name policy, checked on top of the CA's.
	Policy NamePolicy `yaml:"policy,omitempty"`
	// Lints selects the zlint lints run before signing.
	Lints LintConfig `yaml:"lints,omitempty"`
	// CT configures Certificate Transparency for this profile.
	CT CTConfig `yaml:"ct,omitempty"`
}

// LintConfig selects zlint lints for a profile. The zero value runs the
// RFC5280, RFC5480, RFC3279, RFC8813 and CABF_BR sources without the lints
// listed in DefaultLintExclusions. Any error, fatal or warning result refuses
// the certificate; notices are ignored.
type LintConfig struct {
	// Sources replaces the default source list (zlint source names, e.g.
	// RFC5280, CABF_BR, CABF_SMIME_BR, RFC6962, Community).
	Sources []string `yaml:"sources,omitempty"`
	// Exclude names lints not to run, in addition to the defaults.
	Exclude []string `yaml:"exclude,omitempty"`
	// Include names lints to run even if their source is not selected.
	Include []string `yaml:"include,omitempty"`
	// KeepPublicWebLints runs the lints in DefaultLintExclusions too (for a
	// profile that issues public-looking names only).
	KeepPublicWebLints bool `yaml:"keep_public_web_lints,omitempty"`
}

// CTMode says whether a profile's certificates embed SCTs.
type CTMode string

// CT modes.
const (
	CTOff        CTMode = "off"         // no precertificate, no SCTs
	CTEmbed      CTMode = "embed"       // refuse to issue unless the SCT policy is met
	CTBestEffort CTMode = "best-effort" // issue with whatever SCTs arrived
)

// CTConfig is a profile's Certificate Transparency setting (RFC 6962).
type CTConfig struct {
	// Mode is off (the zero value), embed or best-effort.
	Mode CTMode `yaml:"mode,omitempty"`
	// MinSCTs, when set, is how many SCTs this profile's certificates need
	// at least, checked after the SCT source's own policy (the top-level
	// ct.min_scts and ct.min_operators); zero leaves it to that policy. In
	// embed mode fewer refuse the certificate; in best-effort mode the
	// shortfall is recorded.
	MinSCTs int `yaml:"min_scts,omitempty"`
	// Deadline bounds the wait for SCTs; zero means 10s.
	Deadline Duration `yaml:"deadline,omitempty"`
}

// NamePolicy restricts the identifiers a certificate may carry. Empty
// allow-lists allow everything; deny-lists win over allow-lists. Suffixes
// match on label boundaries: "svc.corp" matches "svc.corp" and
// "a.svc.corp", not "xsvc.corp".
type NamePolicy struct {
	AllowedDNSSuffixes  []string `yaml:"allowed_dns_suffixes,omitempty"`
	DeniedDNSSuffixes   []string `yaml:"denied_dns_suffixes,omitempty"`
	AllowedIPRanges     []string `yaml:"allowed_ip_ranges,omitempty"` // CIDR
	DeniedIPRanges      []string `yaml:"denied_ip_ranges,omitempty"`  // CIDR
	AllowedEmailDomains []string `yaml:"allowed_email_domains,omitempty"`
}

// URLs are the base URLs the CA writes into certificates. For issuer NAME:
//
//	CRL distribution point:  <CRLBase>/<NAME>.crl   (DER CRL)
//	AIA caIssuers:           <AIABase>/<NAME>.crt   (DER issuer certificate)
//	AIA OCSP:                <OCSP>                 (shared responder, RFC 6960)
//
// The server serves exactly these paths. Empty bases leave the extension
// out.
type URLs struct {
	CRLBase string `yaml:"crl_base,omitempty"`
	AIABase string `yaml:"aia_base,omitempty"`
	OCSP    string `yaml:"ocsp,omitempty"`
}

// CRLURL returns the CRL distribution point URL for issuer, or "".
func (u URLs) CRLURL(issuer string) string {
	if u.CRLBase == "" {
		return ""
	}
	return strings.TrimRight(u.CRLBase, "/") + "/" + issuer + ".crl"
}

// AIAURL returns the caIssuers URL for issuer, or "".
func (u URLs) AIAURL(issuer string) string {
	if u.AIABase == "" {
		return ""
	}
	return strings.TrimRight(u.AIABase, "/") + "/" + issuer + ".crt"
}

// CRLConfig configures CRLs.
type CRLConfig struct {
	// Validity is NextUpdate - ThisUpdate; zero means 7d.
	Validity Duration `yaml:"validity,omitempty"`
	// Backdate moves ThisUpdate into the past; zero means 1h.
	Backdate Duration `yaml:"backdate,omitempty"`
}

// OCSPConfig configures OCSP responses.
type OCSPConfig struct {
	// Validity is NextUpdate - ThisUpdate; zero means 24h. Signed responses
	// are cached for half of it.
	Validity Duration `yaml:"validity,omitempty"`
}

// Duration is a time.Duration that YAML-decodes from Go syntax ("36h") and
// also from whole days ("90d").
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// ParseDuration parses "90d", "36h", "1h30m".
func ParseDuration(s string) (Duration, error) {
	s = strings.TrimSpace(s)
	if strings.HasSuffix(s, "d") {
		n, err := strconv.ParseUint(strings.TrimSuffix(s, "d"), 10, 32)
		if err != nil || n > 100*365 {
			return 0, fmt.Errorf("ca: bad duration %q (want e.g. 90d or 36h)", s)
		}
		return Duration(time.Duration(n) * 24 * time.Hour), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("ca: bad duration %q (want e.g. 90d or 36h)", s)
	}
	return Duration(d), nil
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("ca: line %d: duration must be a string like 90d or 36h", n.Line)
	}
	v, err := ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = v
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (d Duration) MarshalYAML() (any, error) {
	td := time.Duration(d)
	if td%(24*time.Hour) == 0 && td != 0 {
		return fmt.Sprintf("%dd", td/(24*time.Hour)), nil
	}
	return td.String(), nil
}

// DefaultKeyTypes are the subject key types allowed when a profile lists
// none. Ed25519 is not among them because the Baseline Requirements (and
// so the default lint set) do not allow it; the client and operator
// profiles, which are linted against the RFCs only, add it.
var DefaultKeyTypes = []string{"ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096"}

// rfcOnlyKeyTypes are the defaults of the RFC-linted client profiles.
var rfcOnlyKeyTypes = []string{"ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096", "ed25519"}

// knownKeyTypes are all key types a profile may list.
var knownKeyTypes = map[string]bool{
	"ecdsa-p256": true, "ecdsa-p384": true, "ecdsa-p521": true,
	"rsa-2048": true, "rsa-3072": true, "rsa-4096": true, "ed25519": true,
}

// DefaultProfiles returns the built-in profiles: server (serverAuth, DNS/IP
// names, 90 days), client (clientAuth, DNS/email/URI names, 90 days, CN
// kept) and operator (clientAuth for the admin API's mutual TLS, 30 days,
// CN kept). Config.Profiles entries of the same name replace them.
func DefaultProfiles() map[string]Profile {
	return map[string]Profile{
		"server": {
			Description:            "TLS server: serverAuth, DNS and IP names",
			Validity:               Duration(90 * 24 * time.Hour),
			Backdate:               Duration(time.Hour),
			KeyUsages:              []string{"digitalSignature"},
			ExtKeyUsages:           []string{"serverAuth"},
			SANTypes:               []string{"dns", "ip"},
			MaxSANs:                100,
			KeepCN:                 true,
			AllowNotBeforeNotAfter: true,
		},
		"client": {
			Description:     "TLS client: clientAuth, DNS, email and URI names",
			Validity:        Duration(90 * 24 * time.Hour),
			Backdate:        Duration(time.Hour),
			KeyUsages:       []string{"digitalSignature"},
			ExtKeyUsages:    []string{"clientAuth"},
			SANTypes:        []string{"dns", "email", "uri"},
			AllowedKeyTypes: rfcOnlyKeyTypes,
			MaxSANs:         10,
			KeepCN:          true,
			Lints:           LintConfig{Sources: []string{"RFC5280", "RFC5480", "RFC3279", "RFC8813"}},
		},
		"operator": {
			Description:     "hsmca operator: clientAuth for the admin API",
			Validity:        Duration(30 * 24 * time.Hour),
			Backdate:        Duration(time.Hour),
			KeyUsages:       []string{"digitalSignature"},
			ExtKeyUsages:    []string{"clientAuth"},
			SANTypes:        []string{"email", "uri"},
			AllowedKeyTypes: rfcOnlyKeyTypes,
			MaxSANs:         4,
			KeepCN:          true,
			Lints:           LintConfig{Sources: []string{"RFC5280", "RFC5480", "RFC3279", "RFC8813"}},
		},
	}
}

// withDefaults fills p's zero fields.
func (p Profile) withDefaults() Profile {
	if p.Validity == 0 {
		p.Validity = Duration(90 * 24 * time.Hour)
	}
	if p.Backdate == 0 {
		p.Backdate = Duration(time.Hour)
	}
	if len(p.KeyUsages) == 0 {
		p.KeyUsages = []string{"digitalSignature"}
	}
	if len(p.AllowedKeyTypes) == 0 {
		p.AllowedKeyTypes = DefaultKeyTypes
	}
	if len(p.SANTypes) == 0 {
		p.SANTypes = []string{"dns", "ip"}
	}
	if p.MaxSANs == 0 {
		p.MaxSANs = 100
	}
	if p.CT.Mode == "" {
		p.CT.Mode = CTOff
	}
	if p.CT.Deadline == 0 {
		p.CT.Deadline = Duration(10 * time.Second)
	}
	return p
}

// EffectiveProfiles returns DefaultProfiles overlaid with c.Profiles (see
// Config.Profiles), every zero field filled with its default.
func (c Config) EffectiveProfiles() map[string]Profile {
	out := DefaultProfiles()
	for name, p := range c.Profiles {
		if base, ok := out[name]; ok {
			p = overlay(base, p)
		}
		out[name] = p
	}
	for name, p := range out {
		out[name] = p.withDefaults()
	}
	return out
}

// overlay fills p's empty non-boolean fields from base.
func overlay(base, p Profile) Profile {
	if p.Description == "" {
		p.Description = base.Description
	}
	if p.Validity == 0 {
		p.Validity = base.Validity
	}
	if p.Backdate == 0 {
		p.Backdate = base.Backdate
	}
	if len(p.KeyUsages) == 0 {
		p.KeyUsages = base.KeyUsages
	}
	if len(p.ExtKeyUsages) == 0 {
		p.ExtKeyUsages = base.ExtKeyUsages
	}
	if len(p.AllowedKeyTypes) == 0 {
		p.AllowedKeyTypes = base.AllowedKeyTypes
	}
	if len(p.SANTypes) == 0 {
		p.SANTypes = base.SANTypes
	}
	if p.MaxSANs == 0 {
		p.MaxSANs = base.MaxSANs
	}
	if len(p.Lints.Sources) == 0 {
		p.Lints.Sources = base.Lints.Sources
	}
	return p
}

// DecodeConfig decodes a Config from YAML, refusing unknown fields, and
// validates it.
func DecodeConfig(r io.Reader) (Config, error) {
	var c Config
	dec := yaml.NewDecoder(r)
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return Config{}, errors.New("ca: config is empty")
		}
		return Config{}, fmt.Errorf("ca: config: %w", err)
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// DecodeConfigBytes is DecodeConfig on a byte slice.
func DecodeConfigBytes(b []byte) (Config, error) { return DecodeConfig(bytes.NewReader(b)) }

var (
	keyUsageNames = map[string]bool{"digitalSignature": true, "keyEncipherment": true, "keyAgreement": true, "contentCommitment": true, "dataEncipherment": true}
	extKeyUsages  = map[string]bool{"serverAuth": true, "clientAuth": true, "codeSigning": true, "emailProtection": true, "timeStamping": true, "ocspSigning": true}
	sanTypeNames  = map[string]bool{"dns": true, "ip": true, "email": true, "uri": true}
)

// Validate checks c and returns an error naming the first bad field.
func (c Config) Validate() error {
	if len(c.Issuers) == 0 {
		return errors.New("ca: config: issuers: at least one issuer is required")
	}
	seen := map[string]bool{}
	for i, is := range c.Issuers {
		if !validToken(is.Name) {
			return fmt.Errorf("ca: config: issuers[%d].name %q: want letters, digits, '.', '_' or '-'", i, is.Name)
		}
		if seen[is.Name] {
			return fmt.Errorf("ca: config: issuers[%d].name %q: duplicate issuer", i, is.Name)
		}
		seen[is.Name] = true
		if is.Certificate == "" {
			return fmt.Errorf("ca: config: issuers[%d] (%s): certificate path is required", i, is.Name)
		}
	}
	if c.DefaultIssuer != "" && !seen[c.DefaultIssuer] {
		return fmt.Errorf("ca: config: default_issuer %q is not among issuers", c.DefaultIssuer)
	}
	if err := c.Policy.validate("policy"); err != nil {
		return err
	}
	for field, u := range map[string]string{"urls.crl_base": c.URLs.CRLBase, "urls.aia_base": c.URLs.AIABase, "urls.ocsp": c.URLs.OCSP} {
		if u == "" {
			continue
		}
		pu, err := url.Parse(u)
		if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			return fmt.Errorf("ca: config: %s %q: want an absolute http(s) URL", field, u)
		}
	}
	if c.CRL.Validity < 0 || c.CRL.Backdate < 0 || c.OCSP.Validity < 0 {
		return errors.New("ca: config: crl/ocsp durations must not be negative")
	}
	profiles := c.EffectiveProfiles()
	names := make([]string, 0, len(profiles))
	for name := range profiles {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if !validToken(name) {
			return fmt.Errorf("ca: config: profile name %q: want letters, digits, '.', '_' or '-'", name)
		}
		if err := profiles[name].validate("profiles." + name); err != nil {
			return err
		}
	}
	return nil
}

func (p Profile) validate(where string) error {
	if p.Validity < 0 || p.Backdate < 0 {
		return fmt.Errorf("ca: config: %s: validity and backdate must not be negative", where)
	}
	if p.Backdate > p.Validity {
		return fmt.Errorf("ca: config: %s: backdate %v exceeds validity %v", where, p.Backdate.D(), p.Validity.D())
	}
	for _, k := range p.KeyUsages {
		if !keyUsageNames[k] {
			return fmt.Errorf("ca: config: %s.key_usages: unknown key usage %q", where, k)
		}
	}
	for _, k := range p.ExtKeyUsages {
		if !extKeyUsages[k] {
			return fmt.Errorf("ca: config: %s.ext_key_usages: unknown extended key usage %q", where, k)
		}
	}
	for _, k := range p.AllowedKeyTypes {
		if !knownKeyTypes[k] {
			return fmt.Errorf("ca: config: %s.allowed_key_types: unknown key type %q", where, k)
		}
	}
	for _, k := range p.SANTypes {
		if !sanTypeNames[k] {
			return fmt.Errorf("ca: config: %s.san_types: unknown SAN type %q (want dns, ip, email, uri)", where, k)
		}
	}
	if p.MaxSANs < 0 {
		return fmt.Errorf("ca: config: %s.max_sans must not be negative", where)
	}
	switch p.CT.Mode {
	case CTOff, CTEmbed, CTBestEffort:
	default:
		return fmt.Errorf("ca: config: %s.ct.mode %q: want off, embed or best-effort", where, p.CT.Mode)
	}
	if p.CT.MinSCTs < 0 || p.CT.Deadline < 0 {
		return fmt.Errorf("ca: config: %s.ct: min_scts and deadline must not be negative", where)
	}
	if _, err := buildRegistry(p.Lints, p.KeepCN); err != nil {
		return fmt.Errorf("ca: config: %s.lints: %w", where, err)
	}
	return p.Policy.validate(where + ".policy")
}

func (np NamePolicy) validate(where string) error {
	for _, r := range append(append([]string{}, np.AllowedIPRanges...), np.DeniedIPRanges...) {
		if _, _, err := net.ParseCIDR(r); err != nil {
			return fmt.Errorf("ca: config: %s: bad IP range %q (want CIDR like 10.0.0.0/8)", where, r)
		}
	}
	for _, s := range append(append(append([]string{}, np.AllowedDNSSuffixes...), np.DeniedDNSSuffixes...), np.AllowedEmailDomains...) {
		if strings.TrimPrefix(strings.TrimSpace(s), ".") == "" {
			return fmt.Errorf("ca: config: %s: empty DNS suffix or email domain", where)
		}
	}
	return nil
}

func validToken(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
		default:
			return false
		}
	}
	return s != "." && s != ".."
}
