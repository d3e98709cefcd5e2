package ceremony

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"sort"
	"strings"
	"sync"

	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"

	"github.com/hsmca/hsmca/ca"
)

// ceremonyLintSources are the zlint sources run over ceremony certificates
// and CRLs: the same RFC and CA/B Forum sources as leaf issuance, minus the
// checks that assume the public web PKI (ca.DefaultLintExclusions, see
// docs/lints.md).
var ceremonyLintSources = lint.SourceList{lint.RFC5280, lint.RFC5480, lint.RFC3279, lint.RFC8813, lint.CABFBaselineRequirements}

// The registries are built once each and never changed afterwards. Each
// configuration has a registry of its own: zlint's Filter returns the
// registry it was called on when there is nothing to filter, so setting a
// configuration on a "filtered copy" would change the original as well.
var (
	registryOnce sync.Once
	registry     lint.Registry
	registryErr  error

	caCRLOnce sync.Once
	caCRL     lint.Registry
	caCRLErr  error
)

// lintRegistry is the registry for certificates and for CRLs that cover
// end-entity certificates, with zlint's default configuration.
func lintRegistry() (lint.Registry, error) {
	registryOnce.Do(func() { registry, registryErr = newLintRegistry() })
	return registry, registryErr
}

// caCRLRegistry is the registry for CRLs that cover only CA certificates:
// the Baseline Requirements allow them a next update up to 12 months out.
func caCRLRegistry() (lint.Registry, error) {
	caCRLOnce.Do(func() {
		caCRL, caCRLErr = newLintRegistry()
		if caCRLErr != nil {
			return
		}
		var cfg lint.Configuration
		cfg, caCRLErr = lint.NewConfigFromString("[e_crl_next_update_invalid]\nSubscriberCRL = false\n")
		if caCRLErr == nil {
			caCRL.SetConfiguration(cfg)
		}
	})
	return caCRL, caCRLErr
}

// newLintRegistry builds a new registry of the ceremony lints (a non-empty
// filter, so zlint makes a new registry rather than returning the global
// one).
func newLintRegistry() (lint.Registry, error) {
	global := lint.GlobalRegistry()
	// Exclusions name lints of several zlint versions; keep the ones this
	// version has.
	var exclude []string
	for _, n := range ca.DefaultLintExclusions {
		if global.ByName(n) != nil || global.RevocationListLints().ByName(n) != nil {
			exclude = append(exclude, n)
		}
	}
	return global.Filter(lint.FilterOptions{
		IncludeSources: ceremonyLintSources,
		ExcludeNames:   exclude,
	})
}

// lintFindings turns a zlint result set into refusals (error, fatal) and
// warnings. Each refusal names the lint and says what it found: the
// result's details or, when a lint gives none, its description.
func lintFindings(rs *zlint.ResultSet, reg lint.Registry) (errs, warns []string) {
	for name, r := range rs.Results {
		switch r.Status {
		case lint.Error, lint.Fatal:
			errs = append(errs, name+": "+lintExplanation(reg, name, r.Details))
		case lint.Warn:
			warns = append(warns, name)
		}
	}
	sort.Strings(errs)
	sort.Strings(warns)
	return errs, warns
}

// lintExplanation is what a failing lint found: its description, and the
// result's details when there are any.
func lintExplanation(reg lint.Registry, name, details string) string {
	var desc string
	if l := reg.CertificateLints().ByName(name); l != nil {
		desc = l.Description
	} else if l := reg.RevocationListLints().ByName(name); l != nil {
		desc = l.Description
	}
	switch {
	case desc == "" && details == "":
		return "(no details)"
	case desc == "":
		return details
	case details == "" || details == desc:
		return desc
	}
	return desc + " (" + details + ")"
}

// preflight lints tmpl before the ceremony generates the key it
// certifies: the lint copy certifies a throwaway key of subjectKeyType
// (for a self-signed tmpl, parent nil, the issuer's throwaway key), so a
// template that the lints refuse is refused before any key exists.
// lintAndSign lints again, with the real key, before the module signs.
func (r *runner) preflight(tmpl, parent *x509.Certificate, subjectKeyType, issuerKeyType string) error {
	t := *tmpl
	p := parent
	var pub crypto.PublicKey
	if parent == nil {
		p = &t
	} else {
		subject, err := throwawayKey(subjectKeyType)
		if err != nil {
			return err
		}
		pub = subject.Public()
		if t.SubjectKeyId == nil {
			t.SubjectKeyId = subjectKeyID(pub)
		}
	}
	_, _, _, err := r.lintCopy(&t, p, pub, issuerKeyType)
	return err
}

// lintCopy signs tmpl with a throwaway key of issuerKeyType and lints the
// result. It returns the linted DER, the number of lints run and the
// warnings; any error or fatal finding refuses the certificate.
func (r *runner) lintCopy(tmpl, parent *x509.Certificate, pub crypto.PublicKey, issuerKeyType string) ([]byte, int, []string, error) {
	throwaway, err := throwawayKey(issuerKeyType)
	if err != nil {
		return nil, 0, nil, err
	}
	// A root's lint copy must be self-signed for the linter to treat it as
	// a root, so its key is the throwaway key as well; every other field,
	// including the subject key identifier of the real key, is the same.
	lintParent := *parent
	lintParent.PublicKey = throwaway.Public()
	lintPub := pub
	if parent == tmpl {
		lintPub = throwaway.Public()
	}
	lintDER, err := x509.CreateCertificate(r.rand, tmpl, &lintParent, lintPub, throwaway)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("ceremony: build certificate: %w", err)
	}
	// crypto/x509 builds some certificates that it then refuses to parse
	// (an rfc822Name constraint such as "@example.com"); so would the
	// relying parties that use it.
	if _, err := x509.ParseCertificate(lintDER); err != nil {
		return nil, 0, nil, fmt.Errorf("ceremony: certificate refused before any module signature: it does not parse: %w", err)
	}
	zc, err := zx509.ParseCertificate(lintDER)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("ceremony: lint parse: %w", err)
	}
	reg, err := lintRegistry()
	if err != nil {
		return nil, 0, nil, fmt.Errorf("ceremony: lint registry: %w", err)
	}
	errs, warns := lintFindings(zlint.LintCertificateEx(zc, reg), reg)
	if len(errs) > 0 {
		return nil, 0, nil, fmt.Errorf("ceremony: certificate refused by lint before any module signature: %s", strings.Join(errs, "; "))
	}
	return lintDER, len(reg.Names()), warns, nil
}

// lintAndSign signs tmpl twice: first with a throwaway key of the issuer's
// key type, whose copy is linted, then — only if the lint is clean — with
// the module signer. It checks that both copies have the same
// TBSCertificate, so what was linted is exactly what the module signed.
func (r *runner) lintAndSign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer, issuerKeyType string) ([]byte, error) {
	if tmpl.SubjectKeyId == nil {
		tmpl.SubjectKeyId = subjectKeyID(pub)
	}
	selfSigned := parent == tmpl
	lintDER, n, warns, err := r.lintCopy(tmpl, parent, pub, issuerKeyType)
	if err != nil {
		return nil, err
	}
	r.check("lint clean before signing (%d zlint lints; warnings: %s)", n, orNone(warns))
	r.progress("signing with the module key")
	der, err := x509.CreateCertificate(r.rand, tmpl, parent, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("ceremony: module signature: %w", err)
	}
	a, err := x509.ParseCertificate(lintDER)
	if err != nil {
		return nil, fmt.Errorf("ceremony: parse linted certificate: %w", err)
	}
	b, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ceremony: parse signed certificate: %w", err)
	}
	if selfSigned {
		if !sameExceptKey(a, b) {
			return nil, fmt.Errorf("ceremony: signed certificate differs from the linted one")
		}
		r.check("signed certificate equals the linted one in every field but the public key")
	} else {
		if string(a.RawTBSCertificate) != string(b.RawTBSCertificate) {
			return nil, fmt.Errorf("ceremony: signed certificate differs from the linted one")
		}
		r.check("signed TBSCertificate is byte-identical to the linted one")
	}
	return der, nil
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// throwawayKey makes a key of the given type for lint copies.
func throwawayKey(t string) (crypto.Signer, error) {
	switch t {
	case "ecdsa-p256":
		return ecdsa.GenerateKey(elliptic.P256(), randReader())
	case "ecdsa-p384":
		return ecdsa.GenerateKey(elliptic.P384(), randReader())
	case "rsa-2048", "rsa-3072", "rsa-4096":
		bits := map[string]int{"rsa-2048": 2048, "rsa-3072": 3072, "rsa-4096": 4096}[t]
		return rsa.GenerateKey(randReader(), bits)
	case "ed25519":
		_, k, err := ed25519.GenerateKey(randReader())
		return k, err
	}
	return nil, fmt.Errorf("ceremony: unsupported issuer key type %q", t)
}

// sameExceptKey compares two self-signed certificates field by field,
// ignoring only the subject public key (and so the signature).
func sameExceptKey(a, b *x509.Certificate) bool {
	if a.SerialNumber.Cmp(b.SerialNumber) != 0 || !bytes.Equal(a.RawSubject, b.RawSubject) || !bytes.Equal(a.RawIssuer, b.RawIssuer) ||
		!a.NotBefore.Equal(b.NotBefore) || !a.NotAfter.Equal(b.NotAfter) || a.SignatureAlgorithm != b.SignatureAlgorithm ||
		len(a.Extensions) != len(b.Extensions) {
		return false
	}
	for i := range a.Extensions {
		ea, eb := a.Extensions[i], b.Extensions[i]
		if !ea.Id.Equal(eb.Id) || ea.Critical != eb.Critical || !bytes.Equal(ea.Value, eb.Value) {
			return false
		}
	}
	return true
}
