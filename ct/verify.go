package ct

import (
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	ctgo "github.com/google/certificate-transparency-go"
	"github.com/google/certificate-transparency-go/ctutil"
	ctx509 "github.com/google/certificate-transparency-go/x509"
)

// ErrNoSCTs is returned by VerifyEmbedded for a certificate without an SCT
// list extension.
var ErrNoSCTs = errors.New("ct: certificate has no embedded SCT list")

// VerifiedSCT describes one embedded SCT that verified.
type VerifiedSCT struct {
	LogName   string
	LogID     [sha256.Size]byte
	Timestamp time.Time
}

// SCTFailure describes one embedded SCT that did not verify.
type SCTFailure struct {
	Index     int    // position in the SCT list
	LogName   string // empty when the log is unknown
	LogID     [sha256.Size]byte
	Timestamp time.Time
	Err       error
}

// VerifyError lists the embedded SCTs that did not verify.
type VerifyError struct{ Failures []SCTFailure }

func (e *VerifyError) Error() string {
	parts := make([]string, len(e.Failures))
	for i, f := range e.Failures {
		name := f.LogName
		if name == "" {
			name = "unknown log " + shortID(f.LogID)
		}
		parts[i] = fmt.Sprintf("SCT %d (%s): %v", f.Index, name, f.Err)
	}
	return "ct: embedded SCTs do not verify: " + strings.Join(parts, "; ")
}

// VerifyEmbedded checks every SCT embedded in cert (RFC 6962 section 3.3)
// against the log it names, for the precertificate entry reconstructed from
// cert and issuer (ct-go ctutil). It returns the SCTs that verified and, if
// any did not (unknown log, malformed SCT, bad signature, a timestamp in
// the future), a *VerifyError naming each. A certificate without SCTs
// gives ErrNoSCTs. It is VerifyEmbeddedAt at time.Now.
func VerifyEmbedded(cert, issuer *x509.Certificate, logs []Log) ([]VerifiedSCT, error) {
	return VerifyEmbeddedAt(cert, issuer, logs, time.Now())
}

// VerifyEmbeddedAt is VerifyEmbedded at the time now. An SCT dated more than
// the Submitter's allowance for clock skew (a minute) after now fails, as it
// does at submission: a log does not promise inclusion from the future
// (RFC 6962 section 3.2: the timestamp is when the log saw the entry), and
// browsers refuse such an SCT.
func VerifyEmbeddedAt(cert, issuer *x509.Certificate, logs []Log, now time.Time) ([]VerifiedSCT, error) {
	if cert == nil || issuer == nil {
		return nil, errors.New("ct: certificate and issuer are required")
	}
	var ext []byte
	for _, e := range cert.Extensions {
		if e.Id.Equal(OIDSCTList) {
			ext = e.Value
		}
	}
	if ext == nil {
		return nil, ErrNoSCTs
	}
	if err := cert.CheckSignatureFrom(issuer); err != nil {
		return nil, fmt.Errorf("ct: certificate is not signed by the given issuer: %w", err)
	}
	raw, err := ParseSCTList(ext)
	if err != nil {
		return nil, err
	}
	if len(raw) == 0 {
		return nil, ErrNoSCTs
	}
	leaf, err := parseCT(cert.Raw)
	if err != nil {
		return nil, fmt.Errorf("ct: certificate: %w", err)
	}
	iss, err := parseCT(issuer.Raw)
	if err != nil {
		return nil, fmt.Errorf("ct: issuer: %w", err)
	}
	chain := []*ctx509.Certificate{leaf, iss}
	byID := make(map[[sha256.Size]byte]Log, len(logs))
	for _, l := range logs {
		byID[l.ID] = l
	}
	var ok []VerifiedSCT
	var failed []SCTFailure
	for i, b := range raw {
		sct, err := ParseSCT(b)
		if err != nil {
			failed = append(failed, SCTFailure{Index: i, Err: err})
			continue
		}
		f := SCTFailure{Index: i, LogID: sct.LogID.KeyID, Timestamp: ctgo.TimestampToTime(sct.Timestamp)}
		l, known := byID[sct.LogID.KeyID]
		if !known {
			f.Err = errors.New("no key for this log ID (add --log-key or --log-list)")
			failed = append(failed, f)
			continue
		}
		f.LogName = l.Name
		if err := ctutil.VerifySCT(l.PublicKey, chain, sct, true); err != nil {
			f.Err = fmt.Errorf("signature does not verify: %v", err)
			failed = append(failed, f)
			continue
		}
		if f.Timestamp.After(now.Add(maxFutureSCT)) {
			f.Err = fmt.Errorf("timestamp %s is in the future (now %s)", f.Timestamp.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
			failed = append(failed, f)
			continue
		}
		ok = append(ok, VerifiedSCT{LogName: l.Name, LogID: l.ID, Timestamp: f.Timestamp})
	}
	if len(failed) > 0 {
		return ok, &VerifyError{Failures: failed}
	}
	return ok, nil
}

// LoadVerificationLogs gathers the logs whose SCTs VerifyEmbedded should
// accept: every log in the loglist3 file at listPath (whatever its state:
// a certificate may carry SCTs from logs retired since) and one log per
// public key file in keyPaths, named after the file (without extension).
// Either may be empty, not both.
func LoadVerificationLogs(listPath string, keyPaths []string) ([]Log, error) {
	if listPath == "" && len(keyPaths) == 0 {
		return nil, errors.New("ct: no logs to verify against (give a log list or log keys)")
	}
	var logs []Log
	if listPath != "" {
		data, err := os.ReadFile(listPath)
		if err != nil {
			return nil, fmt.Errorf("ct: read log list: %w", err)
		}
		if logs, err = ParseLogList(data); err != nil {
			return nil, err
		}
	}
	for _, p := range keyPaths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("ct: read log key: %w", err)
		}
		pub, id, err := ParsePublicKey(data)
		if err != nil {
			return nil, fmt.Errorf("%w (%s)", err, p)
		}
		name := strings.TrimSuffix(filepath.Base(p), filepath.Ext(p))
		logs = append(logs, Log{Name: name, Operator: name, ID: id, PublicKey: pub})
	}
	return logs, nil
}
