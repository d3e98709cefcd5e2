package ca

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors callers branch on.
var (
	// ErrSealed is wrapped by Issue, GenerateCRL and OCSPResponse when the
	// issuer signer reports that its key is sealed. The CLI wraps the HSM
	// signers so that their sealed error satisfies errors.Is(err, ErrSealed).
	ErrSealed = errors.New("ca: issuer key is sealed")
	// ErrUnknownSerial: no record for the serial.
	ErrUnknownSerial = errors.New("ca: unknown serial")
	// ErrUnknownProfile: the request names a profile that does not exist.
	ErrUnknownProfile = errors.New("ca: unknown profile")
	// ErrUnknownIssuer: the request names an issuer that does not exist.
	ErrUnknownIssuer = errors.New("ca: unknown issuer")
	// ErrAlreadyRevoked: Revoke on a revoked certificate (other than from
	// certificateHold, or to keyCompromise).
	ErrAlreadyRevoked = errors.New("ca: certificate already revoked")
	// ErrNotOnHold: Unrevoke on a certificate that is not on
	// certificateHold.
	ErrNotOnHold = errors.New("ca: certificate is not on hold (only certificateHold can be undone)")
	// ErrBadRequest: an IssueRequest field other than the CSR is invalid
	// (validity window, names override).
	ErrBadRequest = errors.New("ca: bad request")
)

// ErrPolicy says that an identifier is refused by the name policy or the
// profile. Use errors.As with a *ErrPolicy.
type ErrPolicy struct {
	Name   string // the refused identifier, as requested
	Reason string
}

func (e *ErrPolicy) Error() string {
	return fmt.Sprintf("ca: name %q refused: %s", e.Name, e.Reason)
}

// ErrBadCSR says which CSR rule a request broke (bad signature, key type or
// size not allowed, duplicate or malformed SAN, ...). Use errors.As with a
// *ErrBadCSR.
type ErrBadCSR struct {
	Rule string
	Err  error // underlying parse error, if any
}

func (e *ErrBadCSR) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("ca: bad CSR: %s: %v", e.Rule, e.Err)
	}
	return "ca: bad CSR: " + e.Rule
}

func (e *ErrBadCSR) Unwrap() error { return e.Err }

// LintResult is one zlint (or hsmca) finding.
type LintResult struct {
	Lint    string `json:"lint"`   // zlint lint name, or "hsmca_..." for our own checks
	Status  string `json:"status"` // "error", "fatal" or "warn"
	Details string `json:"details,omitempty"`
}

// ErrLint says that the linted copy of a certificate failed; no real
// signature was made. Use errors.As with a *ErrLint.
type ErrLint struct {
	Results []LintResult
}

func (e *ErrLint) Error() string {
	parts := make([]string, 0, len(e.Results))
	for _, r := range e.Results {
		s := r.Status + " " + r.Lint
		if r.Details != "" {
			s += " (" + r.Details + ")"
		}
		parts = append(parts, s)
	}
	return "ca: certificate refused by lint: " + strings.Join(parts, "; ")
}

// ErrCT says that the SCT policy of an embed profile was not met; the
// precertificate is on record (revocable) but no certificate was issued.
type ErrCT struct {
	Serial string
	Err    error // from SCTSource.GetSCTs; names each log's failure
}

func (e *ErrCT) Error() string {
	return fmt.Sprintf("ca: certificate transparency policy not met for serial %s: %v", e.Serial, e.Err)
}

func (e *ErrCT) Unwrap() error { return e.Err }

// wrapSign classifies a signer error: a sealed key keeps ErrSealed in the
// chain.
func wrapSign(what string, err error) error {
	if errors.Is(err, ErrSealed) {
		return fmt.Errorf("ca: %s: %w", what, err)
	}
	return fmt.Errorf("ca: %s: signer: %w", what, err)
}
