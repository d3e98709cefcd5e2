//go:build cgo

package pkcs11

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	p11 "github.com/miekg/pkcs11"
	bolt "go.etcd.io/bbolt"

	"github.com/hsmca/hsmca/hsm"
	"github.com/hsmca/hsmca/hsm/audit"
	"github.com/hsmca/hsmca/hsm/quorum"
)

// Bucket names in pkcs11.db.
const (
	metaBucket    = "pkcs11-meta"
	keysBucket    = "pkcs11-keys"
	lockoutBucket = "pkcs11-lockout"
)

var auditKeyName = []byte("audit-key")

// Module is a PKCS#11-backed hsm.Module. It is safe for concurrent use.
type Module struct {
	dir      string
	opts     Options
	db       *bolt.DB
	log      *audit.Log
	lockouts *quorum.BoltLockoutStore

	mu     sync.Mutex
	cfg    *moduleConfig
	parts  map[string]*Partition
	libs   map[string]*library // by canonical library path, held until Close
	closed bool
}

var (
	_ hsm.Module       = (*Module)(nil)
	_ TokenInitializer = (*Module)(nil)
)

// Create makes a new, empty pkcs11 module in dir (created with mode 0700 if
// needed) and returns it open. It refuses a directory that is not empty. Partitions are added with InitTokenPartition.
func Create(dir string, opts Options) (*Module, error) {
	opts.defaults()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("hsm/pkcs11: create module directory: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, ConfigFile)); err == nil {
		return nil, fmt.Errorf("hsm/pkcs11: %s holds a module already", dir)
	}
	if entries, err := os.ReadDir(dir); err != nil {
		return nil, fmt.Errorf("hsm/pkcs11: read module directory: %w", err)
	} else if len(entries) > 0 {
		return nil, fmt.Errorf("hsm/pkcs11: %s is not empty; a new module needs an empty directory", dir)
	}
	idb := make([]byte, 16)
	if _, err := io.ReadFull(opts.Rand, idb); err != nil {
		return nil, fmt.Errorf("hsm/pkcs11: module ID: %w", err)
	}
	seed := make([]byte, ed25519.SeedSize)
	if _, err := io.ReadFull(opts.Rand, seed); err != nil {
		return nil, fmt.Errorf("hsm/pkcs11: audit key: %w", err)
	}
	defer clear(seed)
	db, err := openDB(dir)
	if err != nil {
		return nil, err
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte(metaBucket))
		if err != nil {
			return err
		}
		if b.Get(auditKeyName) != nil {
			return fmt.Errorf("hsm/pkcs11: %s already has an audit key; refusing to overwrite", DBFile)
		}
		return b.Put(auditKeyName, seed)
	})
	db.Close()
	if err != nil {
		return nil, fmt.Errorf("hsm/pkcs11: create module: %w", err)
	}
	cfg := &moduleConfig{Version: configVersion, ModuleID: hex.EncodeToString(idb), Created: opts.Clock().UTC()}
	if err := saveConfig(dir, cfg); err != nil {
		return nil, err
	}
	return Open(dir, opts)
}

func openDB(dir string) (*bolt.DB, error) {
	db, err := bolt.Open(filepath.Join(dir, DBFile), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("%w: %s", hsm.ErrModuleInUse, dir)
		}
		return nil, fmt.Errorf("hsm/pkcs11: open %s: %w", DBFile, err)
	}
	return db, nil
}

// Open opens the module in dir with every partition sealed. Tokens need not
// be present: keys stay listable and status readable without them.
func Open(dir string, opts Options) (*Module, error) {
	opts.defaults()
	if opts.MaxSessions < 2 {
		return nil, errors.New("hsm/pkcs11: MaxSessions must be at least 2")
	}
	cfg, err := loadConfig(dir)
	if err != nil {
		return nil, err
	}
	db, err := openDB(dir)
	if err != nil {
		return nil, err
	}
	m := &Module{dir: dir, opts: opts, db: db, cfg: cfg, parts: map[string]*Partition{}, libs: map[string]*library{}}
	if err := m.openState(); err != nil {
		db.Close()
		return nil, err
	}
	for i := range cfg.Partitions {
		p, err := m.newPartition(cfg.Partitions[i])
		if err != nil {
			m.log.Close()
			db.Close()
			return nil, err
		}
		m.parts[p.name] = p
	}
	return m, nil
}

func (m *Module) openState() error {
	var seed []byte
	err := m.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(metaBucket))
		if b == nil || len(b.Get(auditKeyName)) != ed25519.SeedSize {
			return fmt.Errorf("hsm/pkcs11: %s has no audit key (not created by this backend?)", DBFile)
		}
		seed = append([]byte(nil), b.Get(auditKeyName)...)
		_, err := tx.CreateBucketIfNotExists([]byte(keysBucket))
		return err
	})
	if err != nil {
		return err
	}
	key := ed25519.NewKeyFromSeed(seed)
	clear(seed)
	m.log, err = audit.Open(m.db, key, audit.Options{Context: m.cfg.ModuleID, Clock: m.opts.Clock, Logger: m.opts.Logger})
	if err != nil {
		return fmt.Errorf("hsm/pkcs11: open audit log: %w", err)
	}
	m.lockouts, err = quorum.NewBoltLockoutStore(m.db, lockoutBucket, metaBucket, m.opts.Clock)
	if err != nil {
		m.log.Close()
		return fmt.Errorf("hsm/pkcs11: %w", err)
	}
	return nil
}

// ID identifies the module (hex); shares name it.
func (m *Module) ID() string { return m.cfg.ModuleID }

// Backend returns "pkcs11".
func (m *Module) Backend() string { return Backend }

// Dir returns the module directory.
func (m *Module) Dir() string { return m.dir }

// Audit returns the module's audit log.
func (m *Module) Audit() hsm.AuditLog { return m.log }

// AuditPublicKey returns the key that signs the audit head, for auditors to
// pin.
func (m *Module) AuditPublicKey() ed25519.PublicKey { return m.log.PublicKey() }

// Partitions lists partition names in creation order.
func (m *Module) Partitions() ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	names := make([]string, 0, len(m.cfg.Partitions))
	for _, p := range m.cfg.Partitions {
		names = append(names, p.Name)
	}
	return names, nil
}

// Partition returns an existing partition or hsm.ErrNoPartition.
func (m *Module) Partition(name string) (hsm.Partition, error) {
	p, err := m.partition(name)
	if err != nil {
		return nil, err
	}
	return p, nil
}

// TokenPartition is Partition with the concrete type.
func (m *Module) TokenPartition(name string) (*Partition, error) { return m.partition(name) }

func (m *Module) partition(name string) (*Partition, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.parts[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q", hsm.ErrNoPartition, name)
	}
	return p, nil
}

// InitPartition is not enough for this backend: a partition needs a token
// and its current PIN. It returns an error that says to use
// InitTokenPartition (hsmca hsm init --backend pkcs11 --token-uri ...
// --pin-file ...).
func (m *Module) InitPartition(opts hsm.InitOptions) ([]hsm.Share, error) {
	return nil, errors.New("hsm/pkcs11: a partition needs a token: use InitTokenPartition with a token URI and the token's current user PIN")
}

// InitTokenPartition creates partition opts.Partition on the token that
// tokenURI names (RFC 7512; module-path names the PKCS#11 library) and
// returns its N shares.
//
// It logs in once with currentPIN, the token's user PIN, draws a fresh
// secret, derives a random PIN from it (HKDF-SHA256), changes the token's
// user PIN to it (C_SetPIN), checks that the old PIN is refused, splits the
// secret M of N with hsm/quorum and forgets secret and PIN. Afterwards the
// token can be logged in to only by combining M shares. currentPIN is not
// retained; the caller should wipe it.
//
// The partition's settings are written to the module before the PIN is
// changed, and removed again if the change fails. Once the token has taken
// the new PIN (C_SetPIN succeeded), the shares are the only way back in:
// a failure after that returns the shares together with the error, and the
// caller must save them whenever any are returned. A crash between the PIN
// change and the caller saving the shares leaves the token unusable until
// its security officer re-initializes the PIN.
func (m *Module) InitTokenPartition(opts hsm.InitOptions, tokenURI string, currentPIN []byte) ([]hsm.Share, error) {
	if err := validateInit(&opts); err != nil {
		return nil, err
	}
	if len(currentPIN) == 0 {
		return nil, errors.New("hsm/pkcs11: the token's current user PIN is empty")
	}
	sel, err := ParseURI(tokenURI)
	if err != nil {
		return nil, err
	}
	if sel.ModulePath == "" {
		return nil, errors.New("hsm/pkcs11: the token URI needs module-path=/path/to/pkcs11-library.so")
	}
	if sel.Object != "" || sel.ID != nil || sel.Type != "" {
		return nil, errors.New("hsm/pkcs11: the token URI names an object; name only the token (token=, serial=, ...)")
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, errors.New("hsm/pkcs11: module is closed")
	}
	if _, ok := m.parts[opts.Partition]; ok {
		return nil, fmt.Errorf("%w: %q", hsm.ErrPartitionExists, opts.Partition)
	}
	lib, err := m.libraryLocked(sel)
	if err != nil {
		return nil, err
	}
	slot, info, err := lib.locate(sel)
	if err != nil {
		return nil, err
	}
	canon := &URI{Manufacturer: info.Manufacturer, Model: info.Model, Serial: info.Serial, Token: info.Label, ModulePath: lib.path}
	for _, p := range m.cfg.Partitions {
		if u, err := ParseURI(p.TokenURI); err == nil && u.Serial == canon.Serial && u.Token == canon.Token && u.ModulePath == canon.ModulePath {
			return nil, fmt.Errorf("hsm/pkcs11: token %s is already partition %s of this module", canon, p.Name)
		}
	}
	if info.Flags&p11.CKF_LOGIN_REQUIRED == 0 {
		return nil, fmt.Errorf("hsm/pkcs11: token %s does not require a login; a PIN cannot protect its keys", canon)
	}
	pinLen, err := pinLength(info)
	if err != nil {
		return nil, err
	}

	dealing, err := quorum.Deal(m.opts.Rand, nil, opts.Shares, opts.Threshold)
	if err != nil {
		return nil, fmt.Errorf("hsm/pkcs11: %w", err)
	}
	defer clear(dealing.Secret)
	pc := partitionConfig{
		Name: opts.Partition, TokenURI: canon.String(), Policy: opts.Policy,
		Threshold: opts.Threshold, Shares: opts.Shares, Generation: 1,
		Commitments: dealing.Commitments, PINLength: pinLen,
		CollectWindow: opts.CollectWindow, MaxFailures: opts.MaxFailures, LockoutDuration: opts.LockoutDuration,
		Created: m.opts.Clock().UTC(),
	}
	newPIN, err := derivePIN(dealing.Secret, m.cfg.ModuleID, &pc)
	if err != nil {
		return nil, err
	}
	defer clear(newPIN)

	next := *m.cfg
	next.Partitions = append(append([]partitionConfig(nil), m.cfg.Partitions...), pc)
	if err := saveConfig(m.dir, &next); err != nil {
		return nil, err
	}
	changed, err := lib.changePIN(slot, currentPIN, newPIN)
	if err != nil && !changed {
		if rerr := saveConfig(m.dir, m.cfg); rerr != nil {
			m.opts.Logger.Error("hsm/pkcs11: could not remove the failed partition from the module config", "partition", opts.Partition, "err", rerr)
		}
		_, _ = m.log.Append("init-failed", opts.Partition, map[string]string{"token": canon.TokenURI().String(), "reason": err.Error()})
		return nil, err
	}
	// From here on the token's PIN has changed and only the shares can
	// recompute it: every failure returns them with its error, and the
	// caller must save them (see the doc comment).
	m.cfg = &next
	shares := make([]hsm.Share, opts.Shares)
	for i := range shares {
		shares[i] = hsm.Share{
			Module: m.cfg.ModuleID, Partition: opts.Partition, Generation: 1,
			Index: i + 1, Threshold: opts.Threshold, Value: dealing.Values[i],
		}
	}
	if err != nil {
		_, _ = m.log.Append("init-failed", opts.Partition, map[string]string{"token": canon.TokenURI().String(), "reason": err.Error(), "pin_changed": "true"})
		return shares, fmt.Errorf("hsm/pkcs11: partition %s: the token's PIN was changed, then: %w", opts.Partition, err)
	}
	p, err := m.newPartition(pc)
	if err != nil {
		return shares, fmt.Errorf("hsm/pkcs11: partition %s: the token's PIN was changed, then: %w", opts.Partition, err)
	}
	m.parts[p.name] = p
	_, err = m.log.Append("init", opts.Partition, map[string]string{
		"backend": Backend, "token": canon.String(), "threshold": strconv.Itoa(opts.Threshold),
		"shares": strconv.Itoa(opts.Shares), "policy": string(opts.Policy), "generation": "1",
	})
	if err != nil {
		return shares, fmt.Errorf("hsm/pkcs11: partition %s initialized but not audited: %w", opts.Partition, err)
	}
	return shares, nil
}

func validateInit(o *hsm.InitOptions) error {
	if o.Partition == "" {
		return errors.New("hsm/pkcs11: partition name is empty")
	}
	for _, r := range o.Partition {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("hsm/pkcs11: partition name %q: use lower-case letters, digits, - and _", o.Partition)
		}
	}
	if o.Shares < 1 || o.Shares > quorum.MaxShares {
		return fmt.Errorf("hsm/pkcs11: number of shares %d out of range 1..%d", o.Shares, quorum.MaxShares)
	}
	if o.Threshold < 1 || o.Threshold > o.Shares {
		return fmt.Errorf("hsm/pkcs11: threshold %d out of range 1..%d", o.Threshold, o.Shares)
	}
	if o.Policy == "" {
		o.Policy = hsm.PolicyOnline
	}
	if _, err := hsm.ParsePolicy(string(o.Policy)); err != nil {
		return err
	}
	if o.CollectWindow < 0 || o.MaxFailures < 0 || o.LockoutDuration < 0 {
		return errors.New("hsm/pkcs11: negative collect window, failure count or lockout duration")
	}
	return nil
}

// pinLength picks the derived PIN's length within the token's limits.
func pinLength(info tokenInfo) (int, error) {
	n := defaultPINLength
	if info.MaxPinLen > 0 && info.MaxPinLen < uint(n) {
		n = int(info.MaxPinLen)
	}
	if info.MinPinLen > uint(n) {
		n = int(min(info.MinPinLen, maxPINLength))
	}
	if n < minPINLength || (info.MinPinLen > uint(n)) {
		return 0, fmt.Errorf("hsm/pkcs11: the token accepts PINs of %d..%d characters; hsmca needs room for at least %d", info.MinPinLen, info.MaxPinLen, minPINLength)
	}
	return n, nil
}

// derivePIN derives the token's user PIN from the partition secret:
// HKDF-SHA256 keyed by the secret, salted with the module ID, bound to the
// partition name and share generation, written as lower-case hex.
func derivePIN(secret []byte, moduleID string, pc *partitionConfig) ([]byte, error) {
	salt := sha256.Sum256([]byte("hsmca pkcs11 pin salt v1\x00" + moduleID))
	info := "hsmca pkcs11 user pin v1\x00" + pc.Name + "\x00" + strconv.Itoa(pc.Generation)
	raw, err := hkdf.Key(sha256.New, secret, salt[:], info, (pc.PINLength+1)/2)
	if err != nil {
		return nil, fmt.Errorf("hsm/pkcs11: derive PIN: %w", err)
	}
	pin := make([]byte, hex.EncodedLen(len(raw)))
	hex.Encode(pin, raw)
	clear(raw)
	out := append([]byte(nil), pin[:pc.PINLength]...)
	clear(pin)
	return out, nil
}

// libraryLocked returns the module's handle on the library that sel's
// module-path names, loading it on first use. m.mu must be held.
func (m *Module) libraryLocked(sel *URI) (*library, error) {
	path, err := canonicalLibPath(sel.ModulePath)
	if err != nil {
		return nil, err
	}
	if l, ok := m.libs[path]; ok {
		return l, nil
	}
	l, err := acquireLibrary(path, sel)
	if err != nil {
		return nil, err
	}
	m.libs[path] = l
	return l, nil
}

func (m *Module) library(sel *URI) (*library, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, errors.New("hsm/pkcs11: module is closed")
	}
	return m.libraryLocked(sel)
}

// saveGeneration records a partition's new share set (after Reshare).
func (m *Module) savePartition(pc partitionConfig) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	next := *m.cfg
	next.Partitions = append([]partitionConfig(nil), m.cfg.Partitions...)
	for i := range next.Partitions {
		if next.Partitions[i].Name == pc.Name {
			next.Partitions[i] = pc
		}
	}
	if err := saveConfig(m.dir, &next); err != nil {
		return err
	}
	m.cfg = &next
	return nil
}

// Close seals every partition, records the module's running time for the
// lockouts (see quorum.BoltLockoutStore), closes the audit log and the
// database and releases the PKCS#11 libraries this module loaded.
func (m *Module) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	parts := make([]*Partition, 0, len(m.parts))
	for _, p := range m.parts {
		parts = append(parts, p)
	}
	m.mu.Unlock()
	var errs []error
	for _, p := range parts {
		if err := p.Seal(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := m.lockouts.SaveUptime(); err != nil {
		errs = append(errs, fmt.Errorf("hsm/pkcs11: %w", err))
	}
	if err := m.log.Close(); err != nil {
		errs = append(errs, err)
	}
	if err := m.db.Close(); err != nil {
		errs = append(errs, fmt.Errorf("hsm/pkcs11: close %s: %w", DBFile, err))
	}
	m.mu.Lock()
	for path, l := range m.libs {
		l.release()
		delete(m.libs, path)
	}
	m.mu.Unlock()
	return errors.Join(errs...)
}
