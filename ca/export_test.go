package ca

import (
	"fmt"

	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"
)

// LintDER runs profile's zlint registry over der and returns every
// warning, error and fatal (tests lint every certificate they issue).
func LintDER(c *CA, profile string, der []byte) ([]LintResult, error) {
	ps, ok := c.profiles[profile]
	if !ok {
		return nil, fmt.Errorf("no profile %s", profile)
	}
	zc, err := zx509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	var out []LintResult
	for name, r := range zlint.LintCertificateEx(zc, ps.registry).Results {
		if r.Status >= lint.Warn {
			out = append(out, LintResult{Lint: name, Status: r.Status.String(), Details: r.Details})
		}
	}
	return out, nil
}

// LintDERDirect lints der the way issuance does (zcrypto parse, then the
// profile's prepared lints run directly), for BenchmarkLintOnly.
func LintDERDirect(c *CA, profile string, der []byte) ([]LintResult, error) {
	ps, ok := c.profiles[profile]
	if !ok {
		return nil, fmt.Errorf("no profile %s", profile)
	}
	zc, err := zx509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return ps.linters.run(zc), nil
}

// SetRecordWhileLinting forces whether issuances record their copy while
// linting it (true) or lint first (false), instead of deciding by the
// number of issuances in flight.
func SetRecordWhileLinting(c *CA, overlap bool) {
	c.overlapRecord = func(int32) bool { return overlap }
}
