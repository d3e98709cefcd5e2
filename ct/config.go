package ct

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	ctgo "github.com/google/certificate-transparency-go"
)

// Defaults applied to the zero values of Config's optional fields.
// DefaultTimeout is the longest per-attempt timeout derived when
// Config.Timeout is zero (see there).
const (
	DefaultTimeout  = 10 * time.Second
	DefaultRetries  = 2
	DefaultBackoff  = 250 * time.Millisecond
	DefaultDeadline = 30 * time.Second
)

// Config says which logs a Submitter uses and what it takes for a
// certificate to count as logged. It is decoded from YAML (strictly, by the
// caller); every optional field has a usable zero value.
//
//	ct:
//	  logs:
//	    - name: internal-2026
//	      url: https://ct.example.internal/2026/
//	      public_key: /etc/hsmca/ct/internal-2026.pem   # or inline base64 DER
//	      operator: platform-team
//	  min_scts: 1
//	  min_operators: 1
//	  timeout: 4s        # optional; derived from the deadline when unset
//	  retries: 2
//	  deadline: 30s
type Config struct {
	// Logs are the logs to submit to. Their SCTs are returned (and so
	// embedded) in this order.
	Logs []LogConfig `yaml:"logs"`
	// LogList is the path of a log list in the loglist3 JSON format (the
	// format of https://www.gstatic.com/ct/log_list/v3/log_list.json). Logs
	// in it that accept submissions (state usable or qualified, or no state
	// at all as in private lists) are used in addition to Logs; RFC 6962 logs
	// through their url, static-ct-api logs through their submission_url.
	LogList string `yaml:"log_list"`
	// MinSCTs is how many verified SCTs a certificate needs. Zero means 1.
	MinSCTs int `yaml:"min_scts"`
	// MinOperators is how many distinct operators those SCTs must come
	// from. Zero means 1.
	MinOperators int `yaml:"min_operators"`
	// Timeout bounds one add-pre-chain attempt to one log. Zero means
	// derived from the time a submission has: half of what is left before
	// the earlier of Deadline and the caller's deadline (a profile's
	// ct.deadline), at most DefaultTimeout, so that a log that does not
	// answer is retried at least once; with retries disabled, all of it,
	// at most DefaultTimeout. When set and retries are on, it must be
	// shorter than Deadline.
	Timeout time.Duration `yaml:"timeout"`
	// Retries is how many more attempts a log gets after a retryable failure
	// (network error, timeout, HTTP 5xx or 429). Zero means DefaultRetries; a
	// negative value disables retries.
	Retries int `yaml:"retries"`
	// Backoff is the wait before the first retry; it doubles on each
	// further retry and never extends past Deadline. A log's Retry-After is
	// honoured when it is longer. Zero means DefaultBackoff.
	Backoff time.Duration `yaml:"backoff"`
	// Deadline bounds the whole submission of one precertificate to all
	// logs. Zero means DefaultDeadline.
	Deadline time.Duration `yaml:"deadline"`
}

// LogConfig names one CT log.
type LogConfig struct {
	// Name is how errors, metrics and `hsmca ct verify` name the log.
	// Empty means the URL.
	Name string `yaml:"name"`
	// URL is the log's submission prefix: add-pre-chain is posted to
	// URL + "/ct/v1/add-pre-chain".
	URL string `yaml:"url"`
	// PublicKey is the log's public key: the path of a PEM ("PUBLIC KEY")
	// or DER file, or the base64 of the DER SubjectPublicKeyInfo inline (as
	// in log lists), or an inline PEM block. RFC 6962 logs use ECDSA P-256
	// or RSA (2048 bits or more).
	PublicKey string `yaml:"public_key"`
	// Operator is who runs the log; the policy counts distinct operators.
	// Empty means the log is its own operator (its Name).
	Operator string `yaml:"operator"`
}

// withDefaults returns c with zero values replaced by defaults. A zero
// Timeout stays zero: each submission derives it (Submitter.attemptTimeout).
func (c Config) withDefaults() Config {
	if c.MinSCTs == 0 {
		c.MinSCTs = 1
	}
	if c.MinOperators == 0 {
		c.MinOperators = 1
	}
	switch {
	case c.Retries == 0:
		c.Retries = DefaultRetries
	case c.Retries < 0:
		c.Retries = 0
	}
	if c.Backoff == 0 {
		c.Backoff = DefaultBackoff
	}
	if c.Deadline == 0 {
		c.Deadline = DefaultDeadline
	}
	return c
}

// Validate checks the fields that can be checked without reading files.
// New calls it; callers that load configuration call it at start-up.
func (c Config) Validate() error {
	if len(c.Logs) == 0 && c.LogList == "" {
		return errors.New("ct: no logs configured (set logs or log_list)")
	}
	if c.MinSCTs < 0 || c.MinOperators < 0 {
		return errors.New("ct: min_scts and min_operators must not be negative")
	}
	if c.Timeout < 0 || c.Backoff < 0 || c.Deadline < 0 {
		return errors.New("ct: timeout, backoff and deadline must not be negative")
	}
	d := c.withDefaults()
	if d.MinOperators > d.MinSCTs {
		return fmt.Errorf("ct: min_operators (%d) exceeds min_scts (%d)", d.MinOperators, d.MinSCTs)
	}
	// An attempt that may run as long as the whole submission leaves no
	// time to retry a log that does not answer.
	if c.Timeout > 0 && d.Retries > 0 && c.Timeout >= d.Deadline {
		return fmt.Errorf("ct: timeout (%s) must be shorter than deadline (%s), or a log that times out is never retried; leave timeout unset to derive it from the deadline", c.Timeout, d.Deadline)
	}
	for i, l := range c.Logs {
		if err := checkLogURL(l.URL); err != nil {
			return fmt.Errorf("ct: logs[%d]: %w", i, err)
		}
		if l.PublicKey == "" {
			return fmt.Errorf("ct: logs[%d] (%s): public_key is required", i, l.URL)
		}
	}
	return nil
}

func checkLogURL(s string) error {
	if s == "" {
		return errors.New("url is required")
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("url %q: %w", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("url %q: scheme must be http or https", s)
	}
	if u.Host == "" {
		return fmt.Errorf("url %q: no host", s)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("url %q: must not have a query or fragment", s)
	}
	return nil
}

// ResolvePaths makes the relative file paths in c (log_list and public keys
// given as files) relative to dir, typically the directory of the
// configuration file.
func (c *Config) ResolvePaths(dir string) {
	if c.LogList != "" && !filepath.IsAbs(c.LogList) {
		c.LogList = filepath.Join(dir, c.LogList)
	}
	for i := range c.Logs {
		k := c.Logs[i].PublicKey
		if k == "" || keyIsInline(k) || filepath.IsAbs(k) {
			continue
		}
		c.Logs[i].PublicKey = filepath.Join(dir, k)
	}
}

// Log is a CT log resolved from configuration: its key is parsed and its ID
// computed.
type Log struct {
	Name     string
	URL      string
	Operator string
	// ID is the RFC 6962 section 3.2 LogID: SHA-256 of the log's DER
	// SubjectPublicKeyInfo.
	ID        [sha256.Size]byte
	PublicKey crypto.PublicKey
	// State is the log's state in a log list ("usable", "qualified",
	// "readonly", "retired", "rejected", "pending"), or "" when none is
	// given.
	State string
	// NotAfterStart and NotAfterEnd are the log's temporal interval (a
	// certificate's NotAfter must fall in [start, end)); zero means
	// unbounded.
	NotAfterStart, NotAfterEnd time.Time
}

// IDString returns the log ID in base64, the way log lists print it.
func (l Log) IDString() string { return base64.StdEncoding.EncodeToString(l.ID[:]) }

// acceptsSubmissions tells whether a log from a log list takes new entries.
func (l Log) acceptsSubmissions() bool {
	return l.State == "" || l.State == "usable" || l.State == "qualified"
}

// accepts tells whether the log's temporal interval admits notAfter.
func (l Log) accepts(notAfter time.Time) bool {
	if !l.NotAfterStart.IsZero() && notAfter.Before(l.NotAfterStart) {
		return false
	}
	if !l.NotAfterEnd.IsZero() && !notAfter.Before(l.NotAfterEnd) {
		return false
	}
	return true
}

// ParsePublicKey parses a CT log public key given as PEM ("PUBLIC KEY"), as
// DER, or as the base64 of the DER SubjectPublicKeyInfo. It returns the key
// and the log ID derived from it, and refuses keys that RFC 6962 logs may not
// use (section 2.1.4: ECDSA P-256 or RSA).
func ParsePublicKey(data []byte) (crypto.PublicKey, [sha256.Size]byte, error) {
	var id [sha256.Size]byte
	der := data
	if block, _ := pem.Decode(data); block != nil {
		if block.Type != "PUBLIC KEY" {
			return nil, id, fmt.Errorf("ct: PEM block is %q, want PUBLIC KEY", block.Type)
		}
		der = block.Bytes
	} else if b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(data))); err == nil && len(b) > 0 {
		if _, err := x509.ParsePKIXPublicKey(b); err == nil {
			der = b
		}
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, id, fmt.Errorf("ct: parse log public key: %w", err)
	}
	if _, err := ctgo.NewSignatureVerifier(pub); err != nil {
		return nil, id, fmt.Errorf("ct: log public key not usable: %w", err)
	}
	return pub, sha256.Sum256(der), nil
}

// keyIsInline tells whether a public_key value holds the key itself rather
// than a file path.
func keyIsInline(s string) bool {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "-----BEGIN") {
		return true
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) == 0 {
		return false
	}
	_, err = x509.ParsePKIXPublicKey(b)
	return err == nil
}

// loadKey resolves a LogConfig.PublicKey value.
func loadKey(s string) (crypto.PublicKey, [sha256.Size]byte, error) {
	if keyIsInline(s) {
		return ParsePublicKey([]byte(s))
	}
	data, err := os.ReadFile(s)
	if err != nil {
		var id [sha256.Size]byte
		return nil, id, fmt.Errorf("ct: read log public key: %w", err)
	}
	return ParsePublicKey(data)
}

// LoadLogs resolves every log of c: the configured ones (keys read and
// checked) and, if c.LogList is set, those of the list that accept
// submissions. A log that appears twice (same ID) is an error.
func LoadLogs(c Config) ([]Log, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	var logs []Log
	for _, lc := range c.Logs {
		pub, id, err := loadKey(lc.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("%w (log %s)", err, lc.URL)
		}
		l := Log{Name: lc.Name, URL: strings.TrimRight(lc.URL, "/"), Operator: lc.Operator, ID: id, PublicKey: pub}
		if l.Name == "" {
			l.Name = l.URL
		}
		if l.Operator == "" {
			l.Operator = l.Name
		}
		logs = append(logs, l)
	}
	if c.LogList != "" {
		data, err := os.ReadFile(c.LogList)
		if err != nil {
			return nil, fmt.Errorf("ct: read log list: %w", err)
		}
		listed, err := ParseLogList(data)
		if err != nil {
			return nil, err
		}
		for _, l := range listed {
			if l.acceptsSubmissions() && l.URL != "" {
				logs = append(logs, l)
			}
		}
	}
	seen := make(map[[sha256.Size]byte]string)
	for _, l := range logs {
		if prev, dup := seen[l.ID]; dup {
			return nil, fmt.Errorf("ct: logs %s and %s have the same key (log ID %s)", prev, l.Name, l.IDString())
		}
		seen[l.ID] = l.Name
	}
	if len(logs) == 0 {
		return nil, errors.New("ct: the log list names no log that accepts submissions")
	}
	return logs, nil
}

// shortID is a log ID abbreviated for messages.
func shortID(id [sha256.Size]byte) string { return hex.EncodeToString(id[:4]) }

// FlagLogs pairs the repeatable --ct-log URL and --ct-log-key FILE flags of
// `quickstart` and `ca serve`, in order, into log configurations. Each log is
// named after its URL's host and path and counts as its own operator.
func FlagLogs(urls, keyFiles []string) ([]LogConfig, error) {
	if len(urls) != len(keyFiles) {
		return nil, fmt.Errorf("ct: %d --ct-log URLs but %d --ct-log-key files (give one key per log, in the same order)", len(urls), len(keyFiles))
	}
	out := make([]LogConfig, 0, len(urls))
	for i, u := range urls {
		if err := checkLogURL(u); err != nil {
			return nil, fmt.Errorf("ct: --ct-log: %w", err)
		}
		if keyFiles[i] == "" {
			return nil, fmt.Errorf("ct: --ct-log-key for %s is empty", u)
		}
		parsed, _ := url.Parse(u)
		name := strings.TrimRight(parsed.Host+parsed.Path, "/")
		out = append(out, LogConfig{Name: name, URL: u, PublicKey: keyFiles[i], Operator: name})
	}
	return out, nil
}
