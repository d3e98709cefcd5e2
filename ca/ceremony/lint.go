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

var (
	registryOnce sync.Once
	registry     lint.Registry
	registryErr  error
)

// caCRLRegistry is the registry for CRLs that cover only CA certificates:
// the Baseline Requirements allow them a next update up to 12 months out.
func caCRLRegistry() (lint.Registry, error) {
	caCRLOnce.Do(func() {
		caCRL, caCRLErr = lintRegistry()
		if caCRLErr != nil {
			return
		}
		caCRL, caCRLErr = caCRL.Filter(lint.FilterOptions{})
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

var (
	caCRLOnce sync.Once
	caCRL     lint.Registry
	caCRLErr  error
)

func lintRegistry() (lint.Registry, error) {
	registryOnce.Do(func() {
		global := lint.GlobalRegistry()
		// Exclusions name lints of several zlint versions; keep the ones
		// this version has.
		var exclude []string
		for _, n := range ca.DefaultLintExclusions {
			if global.ByName(n) != nil {
				exclude = append(exclude, n)
			}
		}
		registry, registryErr = global.Filter(lint.FilterOptions{
			IncludeSources: ceremonyLintSources,
			ExcludeNames:   exclude,
		})
	})
	return registry, registryErr
}

// lintFindings turns a zlint result set into refusals (error, fatal) and
// warnings.
func lintFindings(rs *zlint.ResultSet) (errs, warns []string) {
	for name, r := range rs.Results {
		switch r.Status {
		case lint.Error, lint.Fatal:
			errs = append(errs, fmt.Sprintf("%s (%s)", name, r.Details))
		case lint.Warn:
			warns = append(warns, name)
		}
	}
	sort.Strings(errs)
	sort.Strings(warns)
	return errs, warns
}

// lintAndSign signs tmpl twice: first with a throwaway key of the issuer's
// key type, whose copy is linted, then — only if the lint is clean — with
// the module signer. It checks that both copies have the same
// TBSCertificate, so what was linted is exactly what the module signed.
func (r *runner) lintAndSign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer, issuerKeyType string) ([]byte, error) {
	throwaway, err := throwawayKey(issuerKeyType)
	if err != nil {
		return nil, err
	}
	if tmpl.SubjectKeyId == nil {
		tmpl.SubjectKeyId = subjectKeyID(pub)
	}
	// A root's lint copy must be self-signed for the linter to treat it as
	// a root, so its key is the throwaway key as well; every other field,
	// including the subject key identifier of the real key, is the same.
	selfSigned := parent == tmpl
	lintParent := *parent
	lintParent.PublicKey = throwaway.Public()
	lintPub := pub
	if selfSigned {
		lintPub = throwaway.Public()
	}
	lintDER, err := x509.CreateCertificate(r.rand, tmpl, &lintParent, lintPub, throwaway)
	if err != nil {
		return nil, fmt.Errorf("ceremony: build certificate: %w", err)
	}
	zc, err := zx509.ParseCertificate(lintDER)
	if err != nil {
		return nil, fmt.Errorf("ceremony: lint parse: %w", err)
	}
	reg, err := lintRegistry()
	if err != nil {
		return nil, fmt.Errorf("ceremony: lint registry: %w", err)
	}
	errs, warns := lintFindings(zlint.LintCertificateEx(zc, reg))
	if len(errs) > 0 {
		return nil, fmt.Errorf("ceremony: certificate refused by lint before any module signature: %s", strings.Join(errs, "; "))
	}
	r.check("lint clean before signing (%d zlint lints; warnings: %s)", len(reg.Names()), orNone(warns))
	r.progress("signing with the module key")
	der, err := x509.CreateCertificate(r.rand, tmpl, parent, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("ceremony: module signature: %w", err)
	}
	a, err := x509.ParseCertificate(lintDER)
	if err != nil {
		return nil, err
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
