package pkcs11

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/hsmca/hsmca/hsm"
)

// Backend is the name this backend reports (hsm.Module.Backend).
const Backend = "pkcs11"

// File names inside a module directory.
const (
	ConfigFile = "pkcs11.json" // token mapping and partition settings
	DBFile     = "pkcs11.db"   // bbolt: lockout state, key metadata, audit log
)

// Errors callers may branch on, besides the hsm package's.
var (
	// ErrNotCompiled is returned by Open and Create in a binary built
	// without cgo.
	ErrNotCompiled = errors.New("hsm/pkcs11: PKCS#11 support is not compiled in (built with CGO_ENABLED=0); rebuild with cgo")
	// ErrTokenUnavailable says the partition's token cannot be reached (not
	// present, removed, restarted). The partition is sealed; present the
	// shares again once the token is back.
	ErrTokenUnavailable = errors.New("hsm/pkcs11: token unavailable")
)

// configVersion is the layout version of pkcs11.json.
const configVersion = 1

// moduleConfig is pkcs11.json. It holds nothing secret: the commitments are
// public, and the PIN exists only while M shares are combined.
type moduleConfig struct {
	Version    int               `json:"version"`
	ModuleID   string            `json:"module_id"`
	Created    time.Time         `json:"created"`
	Partitions []partitionConfig `json:"partitions"`
}

// partitionConfig maps one partition to its token.
type partitionConfig struct {
	Name string `json:"name"`
	// TokenURI names the token (with module-path) as recorded at init,
	// including its serial number so that another token with the same
	// label is never used by mistake.
	TokenURI        string        `json:"token_uri"`
	Policy          hsm.Policy    `json:"policy"`
	Threshold       int           `json:"threshold"`
	Shares          int           `json:"shares"`
	Generation      int           `json:"generation"`
	Commitments     []byte        `json:"commitments"` // hsm/quorum commitments, base64 in JSON
	PINLength       int           `json:"pin_length"`  // characters of the derived PIN
	CollectWindow   time.Duration `json:"collect_window"`
	MaxFailures     int           `json:"max_failures"`
	LockoutDuration time.Duration `json:"lockout_duration"`
	Created         time.Time     `json:"created"`
}

func (c *moduleConfig) partition(name string) (*partitionConfig, bool) {
	for i := range c.Partitions {
		if c.Partitions[i].Name == name {
			return &c.Partitions[i], true
		}
	}
	return nil, false
}

// loadConfig reads and strictly decodes dir/pkcs11.json.
func loadConfig(dir string) (*moduleConfig, error) {
	b, err := os.ReadFile(filepath.Join(dir, ConfigFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("hsm/pkcs11: %s is not a pkcs11 module directory (no %s)", dir, ConfigFile)
		}
		return nil, fmt.Errorf("hsm/pkcs11: read module config: %w", err)
	}
	return parseConfig(b)
}

// parseConfig decodes pkcs11.json strictly and validates it.
func parseConfig(b []byte) (*moduleConfig, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var c moduleConfig
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("hsm/pkcs11: decode %s: %w", ConfigFile, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("hsm/pkcs11: decode %s: trailing data", ConfigFile)
	}
	if c.Version != configVersion {
		return nil, fmt.Errorf("hsm/pkcs11: %s has version %d, this build reads version %d", ConfigFile, c.Version, configVersion)
	}
	if c.ModuleID == "" {
		return nil, fmt.Errorf("hsm/pkcs11: %s has no module_id", ConfigFile)
	}
	seen := map[string]bool{}
	for _, p := range c.Partitions {
		if p.Name == "" || seen[p.Name] {
			return nil, fmt.Errorf("hsm/pkcs11: %s: empty or repeated partition name %q", ConfigFile, p.Name)
		}
		seen[p.Name] = true
		if _, err := ParseURI(p.TokenURI); err != nil {
			return nil, fmt.Errorf("hsm/pkcs11: %s: partition %s: %w", ConfigFile, p.Name, err)
		}
		if _, err := hsm.ParsePolicy(string(p.Policy)); err != nil {
			return nil, fmt.Errorf("hsm/pkcs11: %s: partition %s: %w", ConfigFile, p.Name, err)
		}
		if p.Threshold < 1 || p.Threshold > p.Shares || p.Generation < 1 || p.PINLength < minPINLength || p.PINLength > maxPINLength {
			return nil, fmt.Errorf("hsm/pkcs11: %s: partition %s: inconsistent threshold, shares, generation or pin_length", ConfigFile, p.Name)
		}
	}
	return &c, nil
}

// saveConfig writes pkcs11.json atomically (temporary file, fsync, rename)
// with mode 0600.
func saveConfig(dir string, c *moduleConfig) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("hsm/pkcs11: encode module config: %w", err)
	}
	b = append(b, '\n')
	tmp, err := os.CreateTemp(dir, ConfigFile+".*.tmp")
	if err != nil {
		return fmt.Errorf("hsm/pkcs11: write module config: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("hsm/pkcs11: write module config: %w", err)
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("hsm/pkcs11: write module config: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("hsm/pkcs11: write module config: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("hsm/pkcs11: write module config: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, ConfigFile)); err != nil {
		return fmt.Errorf("hsm/pkcs11: write module config: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// PIN lengths: the derived PIN is lower-case hex, 32 characters (128 bits)
// unless the token allows fewer; tokens that cannot take 16 are refused.
const (
	defaultPINLength = 32
	minPINLength     = 16
	maxPINLength     = 64
)

// Options configures Create and Open. Zero values are usable.
type Options struct {
	// Logger receives operational messages (never secrets); default discards.
	Logger *slog.Logger
	// Clock defaults to time.Now.
	Clock func() time.Time
	// Rand is the randomness for secrets and key IDs; default crypto/rand.
	Rand io.Reader
	// MaxSessions bounds each token's crypto11 session pool (default 32,
	// at least 2).
	MaxSessions int
}

func (o *Options) defaults() {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	if o.MaxSessions == 0 {
		o.MaxSessions = 32
	}
}

// IsModuleDir reports whether dir holds a pkcs11 module (its pkcs11.json),
// so that a caller can pick the backend of an existing module directory.
func IsModuleDir(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, ConfigFile))
	return err == nil
}

// TokenInitializer is implemented by pkcs11 modules (in cgo builds): a
// partition needs a token and its current user PIN, which hsm.InitOptions
// does not carry. Callers holding an hsm.Module type-assert to it.
type TokenInitializer interface {
	InitTokenPartition(opts hsm.InitOptions, tokenURI string, currentPIN []byte) ([]hsm.Share, error)
}
