package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"gopkg.in/yaml.v3"

	"github.com/hsmca/hsmca/acme"
	"github.com/hsmca/hsmca/ca"
	"github.com/hsmca/hsmca/ct"
)

// Config is the whole of a CA's configuration file (ca.yaml): where the
// module and the store live, the CA's issuers, profiles and policy, the
// server's listeners, ACME and Certificate Transparency. The ceremony script
// writes one; `hsmca cert ...`, `hsmca crl ...` and `hsmca ca serve` read it.
//
// Relative paths are resolved against the directory of the config file.
// Decoding is strict: an unknown field is an error.
type Config struct {
	// Module is the HSM module directory (soft or pkcs11). Required.
	Module string `yaml:"module"`
	// Store is the bbolt file that holds certificates and ACME state.
	// Default: "ca.db" beside the config file.
	Store string `yaml:"store,omitempty"`
	// CA holds issuers, profiles, name policy, CRL/AIA/OCSP URLs.
	CA ca.Config `yaml:"ca"`
	// Server configures `hsmca ca serve`.
	Server ServerConfig `yaml:"server,omitempty"`
	// ACME configures the ACME endpoint served under /acme/. Zero value:
	// ACME enabled with defaults, base URL derived from Server.HTTPSAddr.
	ACME acme.Config `yaml:"acme,omitempty"`
	// CT configures Certificate Transparency logs for profiles whose ct.mode
	// is embed or best-effort. Zero value: no logs.
	CT ct.Config `yaml:"ct,omitempty"`

	// dir is the directory of the config file (for relative paths).
	dir string
}

// ServerConfig configures the listeners of `hsmca ca serve`.
type ServerConfig struct {
	// HTTPSAddr serves ACME and the admin API (mutual TLS). Default
	// 127.0.0.1:8443.
	HTTPSAddr string `yaml:"https_addr,omitempty"`
	// HTTPAddr serves CRLs, OCSP and issuer certificates over plain HTTP,
	// where relying parties expect them. Default 127.0.0.1:8080.
	HTTPAddr string `yaml:"http_addr,omitempty"`
	// AdminSocket is the admin API's unix socket, created 0600. Default
	// "admin.sock" beside the config file; "-" disables it.
	AdminSocket string `yaml:"admin_socket,omitempty"`
	// TLSCert and TLSKey are the server's own TLS certificate (PEM chain)
	// and key (PEM, file mode 0600). They are kept outside the HSM on
	// purpose, so that the server can serve while sealed.
	TLSCert string `yaml:"tls_cert,omitempty"`
	TLSKey  string `yaml:"tls_key,omitempty"`
	// OperatorCA is the PEM file of CA certificates that admin clients'
	// certificates must chain to. Default: the issuers' roots.
	OperatorCA string `yaml:"operator_ca,omitempty"`
	// IssuingPartition is the partition that `hsm activate` on the server
	// activates when none is named. Default: the default issuer's partition.
	IssuingPartition string `yaml:"issuing_partition,omitempty"`
	// LogFormat is "text" (default) or "json"; LogLevel "info" (default),
	// "debug", "warn" or "error".
	LogFormat string `yaml:"log_format,omitempty"`
	LogLevel  string `yaml:"log_level,omitempty"`
	// CRLInterval is how often CRLs are regenerated while active (default
	// 1h). CRLs are also regenerated on every revocation.
	CRLInterval ca.Duration `yaml:"crl_interval,omitempty"`
	// CRLFiles and IssuerFiles publish CRLs and CA certificates that this
	// server does not sign itself (the offline root's, from its ceremonies)
	// at <crl_base>/<NAME>.crl and <aia_base>/<NAME>.crt: NAME → PEM or DER
	// file. The server re-reads them on every request.
	CRLFiles    map[string]string `yaml:"crl_files,omitempty"`
	IssuerFiles map[string]string `yaml:"issuer_files,omitempty"`
	// Limits of every listener (negative values are an error; so is a
	// negative crl_interval). Zero values: read_header_timeout 10s,
	// read_timeout 30s, write_timeout 60s, idle_timeout 120s,
	// max_header_bytes 64 KiB, max_body_bytes 64 KiB (admin API and OCSP
	// POST; ACME has its own acme.max_body_bytes).
	ReadHeaderTimeout ca.Duration `yaml:"read_header_timeout,omitempty"`
	ReadTimeout       ca.Duration `yaml:"read_timeout,omitempty"`
	WriteTimeout      ca.Duration `yaml:"write_timeout,omitempty"`
	IdleTimeout       ca.Duration `yaml:"idle_timeout,omitempty"`
	MaxHeaderBytes    int         `yaml:"max_header_bytes,omitempty"`
	MaxBodyBytes      int64       `yaml:"max_body_bytes,omitempty"`
	// RetryAfter is what 503 answers say while the CA awaits its quorum
	// (default 10s).
	RetryAfter ca.Duration `yaml:"retry_after,omitempty"`
}

// Server defaults.
const (
	DefaultHTTPSAddr = "127.0.0.1:8443"
	DefaultHTTPAddr  = "127.0.0.1:8080"
)

// LoadConfig reads, strictly decodes and validates the config at path.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, withHint(fmt.Errorf("config: %w", err), "pass --config FILE (the ceremony script and quickstart write ca.yaml)")
	}
	cfg, err := DecodeConfig(b)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	abs, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cfg.dir = abs
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// DecodeConfig strictly decodes a config document (unknown fields are an
// error; so is a second YAML document after "---", which would otherwise
// be ignored) and fills defaults. It does not validate.
func DecodeConfig(b []byte) (*Config, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var cfg Config
	if err := dec.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	for {
		var more yaml.Node
		err := dec.Decode(&more)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("config: after the first document: %w", err)
		}
		if emptyDocument(&more) {
			continue // a trailing "---" with nothing (or only comments) after it
		}
		return nil, withHint(fmt.Errorf("config: a second YAML document (after \"---\", line %d) is not allowed", more.Line),
			"the configuration is one document: merge the sections into it or delete what follows the ---")
	}
	cfg.setDefaults()
	return &cfg, nil
}

// emptyDocument reports whether n, a decoded YAML document, holds nothing:
// no node, or a null.
func emptyDocument(n *yaml.Node) bool {
	if n.Kind == 0 {
		return true
	}
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return true
		}
		n = n.Content[0]
	}
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

func (c *Config) setDefaults() {
	if c.Store == "" {
		c.Store = "ca.db"
	}
	if c.Server.HTTPSAddr == "" {
		c.Server.HTTPSAddr = DefaultHTTPSAddr
	}
	if c.Server.HTTPAddr == "" {
		c.Server.HTTPAddr = DefaultHTTPAddr
	}
	if c.Server.AdminSocket == "" {
		c.Server.AdminSocket = "admin.sock"
	}
	if c.Server.LogFormat == "" {
		c.Server.LogFormat = "text"
	}
	if c.Server.LogLevel == "" {
		c.Server.LogLevel = "info"
	}
}

// Validate checks the config as a whole; each part validates itself.
func (c *Config) Validate() error {
	if c.Module == "" {
		return fmt.Errorf("config: module: required (the HSM module directory)")
	}
	if err := c.CA.Validate(); err != nil {
		return err
	}
	switch c.Server.LogFormat {
	case "text", "json":
	default:
		return fmt.Errorf("config: server.log_format: %q is not text or json", c.Server.LogFormat)
	}
	switch c.Server.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("config: server.log_level: %q is not debug, info, warn or error", c.Server.LogLevel)
	}
	return c.Server.validateLimits()
}

// validateLimits refuses negative durations and sizes in the server
// section: zero takes the default, and a negative value would switch a
// timeout or the CRL schedule off instead.
func (sc ServerConfig) validateLimits() error {
	for _, d := range []struct {
		name string
		v    ca.Duration
	}{
		{"crl_interval", sc.CRLInterval}, {"read_header_timeout", sc.ReadHeaderTimeout},
		{"read_timeout", sc.ReadTimeout}, {"write_timeout", sc.WriteTimeout},
		{"idle_timeout", sc.IdleTimeout}, {"retry_after", sc.RetryAfter},
	} {
		if d.v < 0 {
			return fmt.Errorf("config: server.%s: %v is negative; leave it out (or 0) for the default", d.name, d.v.D())
		}
	}
	if sc.MaxHeaderBytes < 0 {
		return fmt.Errorf("config: server.max_header_bytes: %d is negative; leave it out (or 0) for the default", sc.MaxHeaderBytes)
	}
	if sc.MaxBodyBytes < 0 {
		return fmt.Errorf("config: server.max_body_bytes: %d is negative; leave it out (or 0) for the default", sc.MaxBodyBytes)
	}
	return nil
}

// Path resolves p against the config file's directory.
func (c *Config) Path(p string) string {
	if p == "" || filepath.IsAbs(p) || c.dir == "" {
		return p
	}
	return filepath.Join(c.dir, p)
}

// Dir is the directory of the config file.
func (c *Config) Dir() string { return c.dir }
