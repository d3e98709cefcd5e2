// Package ceremony runs hsmca's key ceremonies from YAML files that auditors
// can read: `key` (generate a key in a partition and write its public key),
// `root` (a self-signed root from a key in a per-operation partition),
// `intermediate` (a new key in the issuing partition, certified by the root),
// `cross-sign` (an existing CA certificate's subject and key, certified by
// another issuer) and `crl` (a CRL signed by a ceremony key, typically the
// root's).
//
// A ceremony file is decoded strictly: an unknown field, or one the kind
// does not use, is an error, so a typo can never silently drop a
// constraint. A ceremony refuses to overwrite any output, checks all it
// can (issuer validity and path length, partition policy, a lint with a
// throwaway key) before it generates a key, lints every certificate with a
// throwaway key before the module signs it, verifies what it produced
// (signature, chain, that the certified key is the module's key), writes
// its outputs all or none once the module's audit record of the signature
// is durable, and returns a Transcript that names the ceremony file's
// hash, key IDs, fingerprints and the audit-log positions before and
// after, also when it fails.
//
// The package never imports hsm: it reaches the module through the Keys
// interface it declares, which the CLI implements (gathering the custodians'
// quorum for each partition when asked to activate it).
package ceremony

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Kinds of ceremony.
const (
	KindKey          = "key"
	KindRoot         = "root"
	KindIntermediate = "intermediate"
	KindCrossSign    = "cross-sign"
	KindCRL          = "crl"
)

// Limits on validity that a ceremony refuses to exceed.
const (
	MaxRootValidity         = 25 * 365 * 24 * time.Hour
	MaxIntermediateValidity = 8 * 365 * 24 * time.Hour
	MaxCRLValidity          = 400 * 24 * time.Hour
)

// Spec is one ceremony file. Which sections are required depends on Kind.
type Spec struct {
	// Kind is key, root, intermediate, cross-sign or crl.
	Kind string `yaml:"kind"`
	// Description is free text for the transcript.
	Description string `yaml:"description,omitempty"`
	// Key is the key the ceremony creates (key, root, intermediate) or, with
	// Existing set, an existing key it certifies (root).
	Key KeySpec `yaml:"key,omitempty"`
	// Issuer is the signing key and its certificate (intermediate,
	// cross-sign, crl).
	Issuer IssuerSpec `yaml:"issuer,omitempty"`
	// Certificate describes the certificate to make (root, intermediate,
	// cross-sign).
	Certificate CertSpec `yaml:"certificate,omitempty"`
	// CRL describes the CRL to make (crl).
	CRL CRLSpec `yaml:"crl,omitempty"`
	// Outputs name the files the ceremony writes; none may exist yet.
	Outputs Outputs `yaml:"outputs"`
}

// KeySpec names a key in a module partition.
type KeySpec struct {
	Partition string `yaml:"partition"`
	// Type is ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096 or ed25519.
	Type  string `yaml:"type,omitempty"`
	Label string `yaml:"label"`
	// Existing uses a key that is already in the partition instead of
	// generating one.
	Existing bool `yaml:"existing,omitempty"`
}

// IssuerSpec names the signing key and the certificate that goes with it.
type IssuerSpec struct {
	Partition string `yaml:"partition"`
	Key       string `yaml:"key"` // label or ID
	// Certificate is the issuer's PEM certificate file.
	Certificate string `yaml:"certificate"`
}

// Subject is an X.509 distinguished name.
type Subject struct {
	CommonName         string   `yaml:"common_name"`
	Organization       []string `yaml:"organization,omitempty"`
	OrganizationalUnit []string `yaml:"organizational_unit,omitempty"`
	Country            []string `yaml:"country,omitempty"`
	Province           []string `yaml:"province,omitempty"`
	Locality           []string `yaml:"locality,omitempty"`
}

// CertSpec describes a CA certificate.
type CertSpec struct {
	Subject Subject `yaml:"subject"`
	// Validity is a duration such as 20y, 5y, 365d or 8760h.
	Validity string `yaml:"validity"`
	// NotBefore is an RFC 3339 time; empty means now.
	NotBefore string `yaml:"not_before,omitempty"`
	// PathLength is the basic constraints path length; nil means none for a
	// root, 0 for an intermediate and, for a cross-sign, the constraint of
	// the certificate that is cross-signed. A ceremony refuses a path length
	// that the issuer's own does not allow (RFC 5280 §4.2.1.9): none under
	// an issuer with path length 0, and one below the issuer's otherwise.
	PathLength *int `yaml:"path_length,omitempty"`
	// ExtKeyUsages restrict an intermediate (server-auth, client-auth,
	// code-signing, email-protection, ocsp-signing); empty means none.
	ExtKeyUsages []string `yaml:"ext_key_usages,omitempty"`
	// NameConstraints restrict the names the CA may certify.
	NameConstraints NameConstraints `yaml:"name_constraints,omitempty"`
	// CRLURLs, IssuerURLs (AIA caIssuers) and OCSPURLs go into the
	// certificate.
	CRLURLs    []string `yaml:"crl_urls,omitempty"`
	IssuerURLs []string `yaml:"issuer_urls,omitempty"`
	OCSPURLs   []string `yaml:"ocsp_urls,omitempty"`
	// Policies are certificate policy OIDs in dotted form.
	Policies []string `yaml:"policies,omitempty"`
	// Certificate is, for cross-sign only, the existing CA certificate
	// whose subject and key are certified again.
	Certificate string `yaml:"certificate,omitempty"`
}

// NameConstraints is the name constraints extension (RFC 5280 §4.2.1.10).
type NameConstraints struct {
	// Critical marks the extension critical; nil means true, as RFC 5280
	// §4.2.1.10 requires (conforming CAs MUST mark it critical), so an
	// explicit false is refused by lint.
	Critical       *bool    `yaml:"critical,omitempty"`
	PermittedDNS   []string `yaml:"permitted_dns,omitempty"`
	ExcludedDNS    []string `yaml:"excluded_dns,omitempty"`
	PermittedIP    []string `yaml:"permitted_ip,omitempty"` // CIDR
	ExcludedIP     []string `yaml:"excluded_ip,omitempty"`
	PermittedEmail []string `yaml:"permitted_email,omitempty"`
	ExcludedEmail  []string `yaml:"excluded_email,omitempty"`
}

// CRLSpec describes a CRL.
type CRLSpec struct {
	// Number is the CRL number; it must be greater than Previous's.
	Number int64 `yaml:"number"`
	// Previous is the last CRL this issuer published (optional); the
	// ceremony refuses a number that does not grow.
	Previous string `yaml:"previous,omitempty"`
	// Validity is how long until next update (e.g. 365d).
	Validity string `yaml:"validity"`
	// Revoked lists revoked certificates.
	Revoked []RevokedSpec `yaml:"revoked,omitempty"`
	// CoversLeafCertificates says the issuer also certifies end entities.
	// By default a ceremony CRL is an offline CA's and covers only CA
	// certificates: it then carries a critical issuing distribution point
	// with onlyContainsCACerts (RFC 5280 §5.2.5), which is what allows its
	// long next update under the Baseline Requirements.
	CoversLeafCertificates bool `yaml:"covers_leaf_certificates,omitempty"`
}

// RevokedSpec is one CRL entry.
type RevokedSpec struct {
	Serial string `yaml:"serial"` // hex, colons allowed
	// Reason is an RFC 5280 reason name (keyCompromise, cACompromise,
	// affiliationChanged, superseded, cessationOfOperation, ...).
	Reason string `yaml:"reason,omitempty"`
	// RevokedAt is an RFC 3339 time; empty means now.
	RevokedAt string `yaml:"revoked_at,omitempty"`
}

// Outputs are the files a ceremony writes. Relative paths are taken from
// the working directory.
type Outputs struct {
	Certificate string `yaml:"certificate,omitempty"` // root, intermediate, cross-sign
	PublicKey   string `yaml:"public_key,omitempty"`  // key (and optionally others)
	CRL         string `yaml:"crl,omitempty"`         // crl
}

// File is a loaded ceremony file.
type File struct {
	Path string
	// SHA256 is the hex hash of the file's bytes, quoted in the transcript
	// so that auditors know exactly which script ran.
	SHA256 string
	Spec   Spec
}

// Load reads and strictly decodes a ceremony file and validates it.
func Load(path string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ceremony: %w", err)
	}
	f, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("ceremony %s: %w", path, err)
	}
	f.Path = path
	return f, nil
}

// Parse strictly decodes and validates a ceremony document.
func Parse(b []byte) (*File, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var s Spec
	if err := dec.Decode(&s); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("ceremony: empty file")
		}
		return nil, fmt.Errorf("ceremony: %w", err)
	}
	// One ceremony per file: a second YAML document would be ignored by
	// the run but read by an auditor as part of the ceremony.
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, fmt.Errorf("ceremony: after the ceremony document: %w", err)
		}
		return nil, errors.New("ceremony: the file holds more than one YAML document; a ceremony file holds exactly one")
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(b)
	return &File{SHA256: hex.EncodeToString(sum[:]), Spec: s}, nil
}

// Validate checks that the sections the kind needs are present and sane,
// that no section the kind does not use is set (it would be silently
// ignored: an auditor reading name constraints in a crl ceremony would
// believe they apply somewhere) and that no two outputs name the same file.
func (s *Spec) Validate() error {
	if unused := s.unusedFields(); len(unused) > 0 {
		return fmt.Errorf("ceremony: kind %s does not use %s; remove it (it would be ignored)", s.Kind, strings.Join(unused, ", "))
	}
	if err := s.Outputs.validate(); err != nil {
		return err
	}
	switch s.Kind {
	case KindKey:
		if err := s.Key.validate(true); err != nil {
			return err
		}
		if s.Outputs.PublicKey == "" {
			return errors.New("ceremony: key: outputs.public_key is required")
		}
	case KindRoot:
		if err := s.Key.validate(!s.Key.Existing); err != nil {
			return err
		}
		if err := s.Certificate.validate(MaxRootValidity, false); err != nil {
			return err
		}
		if s.Outputs.Certificate == "" {
			return errors.New("ceremony: root: outputs.certificate is required")
		}
	case KindIntermediate:
		if err := s.Key.validate(!s.Key.Existing); err != nil {
			return err
		}
		if err := s.Issuer.validate(); err != nil {
			return err
		}
		if err := s.Certificate.validate(MaxIntermediateValidity, false); err != nil {
			return err
		}
		if s.Outputs.Certificate == "" {
			return errors.New("ceremony: intermediate: outputs.certificate is required")
		}
	case KindCrossSign:
		if err := s.Issuer.validate(); err != nil {
			return err
		}
		if err := s.Certificate.validate(MaxIntermediateValidity, true); err != nil {
			return err
		}
		if s.Outputs.Certificate == "" {
			return errors.New("ceremony: cross-sign: outputs.certificate is required")
		}
	case KindCRL:
		if err := s.Issuer.validate(); err != nil {
			return err
		}
		if s.CRL.Number < 1 {
			return errors.New("ceremony: crl.number must be 1 or more")
		}
		d, err := parseValidity(s.CRL.Validity)
		if err != nil {
			return fmt.Errorf("ceremony: crl.validity: %w", err)
		}
		if d > MaxCRLValidity {
			return fmt.Errorf("ceremony: crl.validity %s exceeds %d days", s.CRL.Validity, int(MaxCRLValidity.Hours()/24))
		}
		for i, r := range s.CRL.Revoked {
			if _, err := parseSerial(r.Serial); err != nil {
				return fmt.Errorf("ceremony: crl.revoked[%d]: %w", i, err)
			}
			if r.Reason != "" {
				if _, err := parseReason(r.Reason); err != nil {
					return fmt.Errorf("ceremony: crl.revoked[%d]: %w", i, err)
				}
			}
			if r.RevokedAt != "" {
				if _, err := time.Parse(time.RFC3339, r.RevokedAt); err != nil {
					return fmt.Errorf("ceremony: crl.revoked[%d].revoked_at: %w", i, err)
				}
			}
		}
		if s.Outputs.CRL == "" {
			return errors.New("ceremony: crl: outputs.crl is required")
		}
	case "":
		return errors.New("ceremony: kind is required (key, root, intermediate, cross-sign or crl)")
	default:
		return fmt.Errorf("ceremony: unknown kind %q (want key, root, intermediate, cross-sign or crl)", s.Kind)
	}
	return nil
}

// validate checks the key section. The type is required for a key the
// ceremony generates; for an existing key it is optional, and when given
// the ceremony checks that the key has that type.
func (k KeySpec) validate(needType bool) error {
	if k.Partition == "" {
		return errors.New("ceremony: key.partition is required")
	}
	if k.Label == "" {
		return errors.New("ceremony: key.label is required")
	}
	if needType || k.Type != "" {
		if _, err := keyAlgorithm(k.Type); err != nil {
			return err
		}
	}
	return nil
}

// unusedFields names the fields that are set although s.Kind does not use
// them, in the file's spelling (certificate.name_constraints). An unknown
// kind has none: Validate reports the kind.
func (s *Spec) unusedFields() []string {
	var out []string
	switch s.Kind {
	case KindKey:
		out = append(out, setFields("issuer", s.Issuer)...)
		out = append(out, setFields("certificate", s.Certificate)...)
		out = append(out, setFields("crl", s.CRL)...)
		out = append(out, setFields("outputs", s.Outputs, "public_key")...)
	case KindRoot:
		out = append(out, setFields("issuer", s.Issuer)...)
		out = append(out, setFields("certificate", s.Certificate, "subject", "validity", "not_before", "path_length", "ext_key_usages",
			"name_constraints", "crl_urls", "issuer_urls", "ocsp_urls", "policies")...)
		out = append(out, setFields("crl", s.CRL)...)
		out = append(out, setFields("outputs", s.Outputs, "certificate", "public_key")...)
	case KindIntermediate:
		out = append(out, setFields("certificate", s.Certificate, "subject", "validity", "not_before", "path_length", "ext_key_usages",
			"name_constraints", "crl_urls", "issuer_urls", "ocsp_urls", "policies")...)
		out = append(out, setFields("crl", s.CRL)...)
		out = append(out, setFields("outputs", s.Outputs, "certificate", "public_key")...)
	case KindCrossSign:
		// The subject (and the key) are those of certificate.certificate.
		out = append(out, setFields("key", s.Key)...)
		out = append(out, setFields("certificate", s.Certificate, "certificate", "validity", "not_before", "path_length", "ext_key_usages",
			"name_constraints", "crl_urls", "issuer_urls", "ocsp_urls", "policies")...)
		out = append(out, setFields("crl", s.CRL)...)
		out = append(out, setFields("outputs", s.Outputs, "certificate", "public_key")...)
	case KindCRL:
		out = append(out, setFields("key", s.Key)...)
		out = append(out, setFields("certificate", s.Certificate)...)
		out = append(out, setFields("outputs", s.Outputs, "crl")...)
	}
	return out
}

// setFields returns prefix.NAME for each field of the struct v that is set
// (not its zero value) and whose YAML name is not in used.
func setFields(prefix string, v any, used ...string) []string {
	rv := reflect.ValueOf(v)
	rt := rv.Type()
	var out []string
	for i := range rt.NumField() {
		name, _, _ := strings.Cut(rt.Field(i).Tag.Get("yaml"), ",")
		if slices.Contains(used, name) || rv.Field(i).IsZero() {
			continue
		}
		out = append(out, prefix+"."+name)
	}
	return out
}

// validate refuses two outputs that name the same file: the second write
// would fail after the module had signed, or replace the first.
func (o Outputs) validate() error {
	seen := map[string]string{}
	for _, out := range []struct{ field, path string }{
		{"outputs.certificate", o.Certificate}, {"outputs.public_key", o.PublicKey}, {"outputs.crl", o.CRL},
	} {
		if out.path == "" {
			continue
		}
		key := filepath.Clean(out.path)
		if abs, err := filepath.Abs(out.path); err == nil {
			key = abs
		}
		if other, ok := seen[key]; ok {
			return fmt.Errorf("ceremony: %s and %s both name %s; each output needs a file of its own", other, out.field, out.path)
		}
		seen[key] = out.field
	}
	return nil
}

func (i IssuerSpec) validate() error {
	if i.Partition == "" || i.Key == "" || i.Certificate == "" {
		return errors.New("ceremony: issuer.partition, issuer.key and issuer.certificate are required")
	}
	return nil
}

func (c CertSpec) validate(max time.Duration, crossSign bool) error {
	if crossSign {
		if c.Certificate == "" {
			return errors.New("ceremony: cross-sign: certificate.certificate (the CA certificate to cross-sign) is required")
		}
	} else if strings.TrimSpace(c.Subject.CommonName) == "" {
		return errors.New("ceremony: certificate.subject.common_name is required")
	}
	d, err := parseValidity(c.Validity)
	if err != nil {
		return fmt.Errorf("ceremony: certificate.validity: %w", err)
	}
	if d > max {
		return fmt.Errorf("ceremony: certificate.validity %s exceeds the limit of %d years", c.Validity, int(max.Hours()/24/365))
	}
	if c.NotBefore != "" {
		if _, err := time.Parse(time.RFC3339, c.NotBefore); err != nil {
			return fmt.Errorf("ceremony: certificate.not_before: %w", err)
		}
	}
	if c.PathLength != nil && *c.PathLength < 0 {
		return errors.New("ceremony: certificate.path_length must be 0 or more")
	}
	for _, e := range c.ExtKeyUsages {
		if _, ok := extKeyUsages[e]; !ok {
			return fmt.Errorf("ceremony: certificate.ext_key_usages: unknown %q", e)
		}
	}
	for _, p := range c.Policies {
		if _, err := parseOID(p); err != nil {
			return fmt.Errorf("ceremony: certificate.policies: %w", err)
		}
	}
	for _, cidr := range append(append([]string{}, c.NameConstraints.PermittedIP...), c.NameConstraints.ExcludedIP...) {
		if _, err := parseCIDR(cidr); err != nil {
			return fmt.Errorf("ceremony: certificate.name_constraints: %w", err)
		}
	}
	return nil
}

// parseValidity accepts Go durations plus "d" (days) and "y" (365 days).
func parseValidity(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, errors.New("required (e.g. 20y, 365d, 8760h)")
	}
	var unit time.Duration
	switch {
	case strings.HasSuffix(s, "y"):
		unit = 365 * 24 * time.Hour
	case strings.HasSuffix(s, "d"):
		unit = 24 * time.Hour
	}
	if unit != 0 {
		var n int
		if _, err := fmt.Sscanf(s[:len(s)-1], "%d", &n); err != nil || n <= 0 || fmt.Sprint(n) != s[:len(s)-1] {
			return 0, fmt.Errorf("bad duration %q (e.g. 20y, 365d, 8760h)", s)
		}
		if n > 100*365 {
			return 0, fmt.Errorf("duration %q is too long", s)
		}
		return time.Duration(n) * unit, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("bad duration %q (e.g. 20y, 365d, 8760h)", s)
	}
	return d, nil
}
