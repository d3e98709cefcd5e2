// Package soft is hsmca's pure-Go HSM backend: a module is one directory
// holding one bbolt file (module.db, mode 0600) that one process opens at a
// time. Processes that only read the audit log open it read-only
// (Options.ReadOnly) and change nothing in the directory.
//
// Activation is cryptographic. Each partition's keys are encrypted under a
// master key, which is stored wrapped under a key-encryption key derived
// from a secret that exists only while M custodian shares are combined
// (Feldman VSS, hsm/quorum). The module keeps no copy of the secret; it
// keeps the unwrapped master key and private keys in memory only while the
// partition is active and drops them on Seal, Close or exit. Each key's ID
// and attributes are authenticated as AES-GCM associated data, so editing
// the file (flipping "exportable", changing a label or the ciphertext) makes
// that key fail to load with *hsm.KeyLoadError; other keys are unaffected.
//
// A change to the module (a partition's init, a key stored or destroyed, a
// re-share) has its audit record committed before the change is, so a
// crash leaves at worst a record of a change that did not happen; a change
// that fails to commit is followed by a "commit-failed" record. A re-share
// replaces the partition's master key and re-wraps its keys under the new
// one (see crypto.go), so old shares with an old copy of module.db open
// only what that copy holds.
//
// Every event goes to the module's audit log (hsm/audit): signature records
// to the append-only segment audit.seg beside module.db (mode 0600), every
// other event to module.db, all in one hash chain under a head signed by
// the module's Ed25519 audit key. A signature is returned only after its
// record has been written to the segment, so killing the process never
// loses the record of a signature it handed out; a power loss can lose at
// most the records written since the last background sync (a few tens of
// milliseconds at the default 20 ms interval, and never more than
// audit.DefaultMaxUnsynced records). The CA syncs them itself (SyncAudit,
// hsm.AuditSyncer) before it stores or hands out a certificate, a
// precertificate or a CRL, so the records of those signatures are never
// among the lost.
// After a crash, Open keeps the records found after the signed head and
// reports a torn last record through Verify until the next audited event
// records its loss (see hsm/audit). The audit key and the lockout state are
// not behind the quorum, because a sealed module must record rejected
// shares and enforce lockouts; they are protected by the files' permissions
// only (see hsm/audit). A lockout lasts its full duration of the module's
// running time, which the module keeps across restarts: setting the clock
// forward while the module is closed does not end it (see
// quorum.BoltLockoutStore).
//
// What soft does not do: it is not tamper-resistant hardware. Private keys
// live in this process's memory while active (Go cannot reliably wipe them),
// and anyone who can write the module directory can destroy it or rewrite
// its audit log. Use hsm/pkcs11 where that matters.
package soft

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/hsmca/hsmca/hsm"
	"github.com/hsmca/hsmca/hsm/audit"
	"github.com/hsmca/hsmca/hsm/quorum"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// FileName is the module's database inside its directory.
const FileName = "module.db"

// AuditFileName is the module's audit segment (signature records) inside
// its directory.
const AuditFileName = audit.SegmentFile

var (
	metaBucket       = []byte("meta")
	partitionsBucket = []byte("partitions")
	keysBucket       = []byte("keys")
	metaKey          = []byte("module")
	lockoutBucket    = "lockout"
)

// Options configures Open. Zero values are usable.
type Options struct {
	// Clock defaults to time.Now. It stamps audit records, key creation
	// times, collecting windows and lockouts.
	Clock func() time.Time
	// Rand is the randomness source for secrets, nonces and keys; defaults
	// to crypto/rand.Reader.
	Rand io.Reader
	// Logger receives operational warnings; defaults to discarding.
	Logger *slog.Logger
	// LockTimeout is how long Open waits for another process to release the
	// module file before failing with hsm.ErrModuleInUse; default 250ms.
	LockTimeout time.Duration
	// ReadOnly opens an existing module to read and verify its audit log
	// (`hsmca hsm audit verify` and `list`, perhaps on an auditor's copy):
	// module.db is opened read-only and nothing in the directory is
	// created or written, not even the module's running time at Close, so
	// the directory may be read-only. bbolt takes a shared lock, so a
	// process that has the module open (a running server) still makes
	// Open fail with hsm.ErrModuleInUse, and a reader keeps writers out
	// until it closes. Every operation that would change the module fails
	// with ErrReadOnly, and so does Partition: a partition's state
	// includes its lockout, which only a writable open keeps.
	ReadOnly bool
}

// ErrReadOnly is returned by the operations of a module opened with
// Options.ReadOnly that would change it.
var ErrReadOnly = errors.New("soft: module is opened read-only")

// Module is a soft HSM module. It implements hsm.Module and is safe for
// concurrent use.
type Module struct {
	dir    string
	db     *bolt.DB
	meta   moduleMeta
	log    *audit.Log
	lock   *quorum.BoltLockoutStore
	clock  func() time.Time
	rand   io.Reader
	logger *slog.Logger

	readOnly bool

	mu         sync.Mutex
	partitions map[string]*Partition
	closed     bool

	// commitFault, set only by tests, runs in the transaction of each
	// audited change (named by its event type) before the change; an
	// error fails the commit.
	commitFault func(tx *bolt.Tx, event string) error
	// commitLost, set only by tests, replaces the result of an audited
	// change's commit that succeeded, the way a failed fdatasync does
	// after bbolt wrote its meta page: an error, with the change visible.
	commitLost func(event string) error
	// beforeCommit, set only by tests, runs in a key operation (named by
	// its event type) after its first check that the partition is active
	// and before the check at its commit (Partition.commitActive).
	beforeCommit func(event string)
}

var _ hsm.Module = (*Module)(nil)

type moduleMeta struct {
	Version  int       `json:"version"`
	ID       string    `json:"id"`
	Created  time.Time `json:"created"`
	AuditKey []byte    `json:"audit_key"` // Ed25519 seed; see the package doc
}

// Exists reports whether dir holds a soft module.
func Exists(dir string) bool {
	st, err := os.Stat(filepath.Join(dir, FileName))
	return err == nil && st.Mode().IsRegular()
}

// Open opens the module in dir, creating the directory (0700) and a new
// module (ID, audit key) if there is none, unless opts.ReadOnly. Every
// partition starts sealed. If another process has the module open, Open
// fails with an error wrapping hsm.ErrModuleInUse after opts.LockTimeout.
func Open(dir string, opts Options) (*Module, error) {
	if dir == "" {
		return nil, errors.New("soft: module directory is empty")
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.Rand == nil {
		opts.Rand = rand.Reader
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = 250 * time.Millisecond
	}
	path := filepath.Join(dir, FileName)
	if opts.ReadOnly {
		if !Exists(dir) {
			return nil, fmt.Errorf("soft: no module in %s (a read-only open creates none)", dir)
		}
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("soft: create module directory: %w", err)
	}
	if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("soft: %s is accessible to other users (mode %04o); it must be 0600", path, st.Mode().Perm())
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("soft: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.LockTimeout, ReadOnly: opts.ReadOnly})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("soft: open %s: %w", path, hsm.ErrModuleInUse)
	}
	if err != nil {
		return nil, fmt.Errorf("soft: open %s: %w", path, err)
	}
	m := &Module{dir: dir, db: db, clock: opts.Clock, rand: opts.Rand, logger: opts.Logger, readOnly: opts.ReadOnly, partitions: map[string]*Partition{}}
	var created bool
	if opts.ReadOnly {
		err = m.loadMeta()
	} else {
		created, err = m.loadOrCreateMeta()
	}
	if err != nil {
		db.Close()
		return nil, err
	}
	seed := m.meta.AuditKey
	if len(seed) != ed25519.SeedSize {
		db.Close()
		return nil, errors.New("soft: stored audit key is malformed")
	}
	m.log, err = audit.Open(db, ed25519.NewKeyFromSeed(seed), audit.Options{
		Context: m.meta.ID, Clock: m.clock, Logger: m.logger, Segment: filepath.Join(dir, AuditFileName),
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("soft: %w", err)
	}
	if opts.ReadOnly {
		// No lockout store: opening one writes, and without partitions
		// nothing reads it.
		return m, nil
	}
	if m.lock, err = quorum.NewBoltLockoutStore(db, lockoutBucket, string(metaBucket), m.clock); err != nil {
		m.log.Close()
		db.Close()
		return nil, fmt.Errorf("soft: %w", err)
	}
	if created {
		fields := map[string]string{"module": m.meta.ID, "audit_key": base64.StdEncoding.EncodeToString(m.log.PublicKey()), "backend": "soft"}
		if _, err := m.log.Append("init", "", fields); err != nil {
			m.log.Close()
			db.Close()
			return nil, fmt.Errorf("soft: %w", err)
		}
	}
	return m, nil
}

func (m *Module) loadOrCreateMeta() (created bool, err error) {
	err = m.db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{metaBucket, partitionsBucket, keysBucket} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		if v := tx.Bucket(metaBucket).Get(metaKey); v != nil {
			return json.Unmarshal(v, &m.meta)
		}
		id := make([]byte, 16)
		seed := make([]byte, ed25519.SeedSize)
		if _, err := io.ReadFull(m.rand, id); err != nil {
			return err
		}
		if _, err := io.ReadFull(m.rand, seed); err != nil {
			return err
		}
		m.meta = moduleMeta{Version: 1, ID: hex.EncodeToString(id), Created: m.clock().UTC(), AuditKey: seed}
		v, err := json.Marshal(m.meta)
		if err != nil {
			return err
		}
		created = true
		return tx.Bucket(metaBucket).Put(metaKey, v)
	})
	if err != nil {
		return false, fmt.Errorf("soft: module metadata: %w", err)
	}
	return created, m.checkMeta()
}

// loadMeta reads the metadata of a module opened read-only.
func (m *Module) loadMeta() error {
	err := m.db.View(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{metaBucket, partitionsBucket, keysBucket} {
			if tx.Bucket(b) == nil {
				return fmt.Errorf("no %s bucket: not a module, or one whose creation did not finish", b)
			}
		}
		v := tx.Bucket(metaBucket).Get(metaKey)
		if v == nil {
			return errors.New("none stored: not a module, or one whose creation did not finish")
		}
		return json.Unmarshal(v, &m.meta)
	})
	if err != nil {
		return fmt.Errorf("soft: module metadata: %w", err)
	}
	return m.checkMeta()
}

func (m *Module) checkMeta() error {
	if m.meta.Version != 1 || m.meta.ID == "" {
		return fmt.Errorf("soft: unsupported module format version %d", m.meta.Version)
	}
	return nil
}

// ID returns the module's ID (32 hex digits).
func (m *Module) ID() string { return m.meta.ID }

// Backend returns "soft".
func (m *Module) Backend() string { return "soft" }

// Dir returns the module's directory.
func (m *Module) Dir() string { return m.dir }

// Audit returns the module's audit log. On a module opened read-only it
// offers only the readers: an append would create or rewrite the segment
// before the read-only database refused its record.
func (m *Module) Audit() hsm.AuditLog {
	if m.readOnly {
		return readOnlyLog{m.log}
	}
	return m.log
}

// readOnlyLog is the audit log of a module opened read-only.
type readOnlyLog struct{ l *audit.Log }

func (r readOnlyLog) Head() (hsm.AuditHead, error)   { return r.l.Head() }
func (r readOnlyLog) Verify() (hsm.AuditHead, error) { return r.l.Verify() }
func (r readOnlyLog) Events(from uint64, limit int) ([]hsm.AuditEvent, error) {
	return r.l.Events(from, limit)
}

// VerifyExtends is audit.Log.VerifyExtends, for `audit verify --known-head`.
func (r readOnlyLog) VerifyExtends(known ...hsm.AuditHead) (hsm.AuditHead, error) {
	return r.l.VerifyExtends(known...)
}

// VerifyWithKey is audit.Log.VerifyWithKey.
func (r readOnlyLog) VerifyWithKey(pub ed25519.PublicKey) (hsm.AuditHead, error) {
	return r.l.VerifyWithKey(pub)
}

// AuditPublicKey returns the key that signs the audit log's head, for
// auditors to pin.
func (m *Module) AuditPublicKey() ed25519.PublicKey { return m.log.PublicKey() }

var partitionName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// InitPartition creates a partition with a fresh secret split into
// opts.Shares shares of threshold opts.Threshold, and returns the shares.
// The partition starts sealed. It returns shares exactly when the partition
// was created: on an error (its audit record, or the commit after it,
// failed) there is no partition, and the name can be used again.
func (m *Module) InitPartition(opts hsm.InitOptions) ([]hsm.Share, error) {
	if m.readOnly {
		return nil, fmt.Errorf("soft: init partition %s: %w", opts.Partition, ErrReadOnly)
	}
	if !partitionName.MatchString(opts.Partition) {
		return nil, fmt.Errorf("soft: partition name %q: use 1-63 lower-case letters, digits, '-' or '_'", opts.Partition)
	}
	if opts.Policy == "" {
		opts.Policy = hsm.PolicyOnline
	}
	if _, err := hsm.ParsePolicy(string(opts.Policy)); err != nil {
		return nil, err
	}
	if opts.CollectWindow < 0 || opts.LockoutDuration < 0 || opts.MaxFailures < 0 {
		return nil, errors.New("soft: negative collect window, lockout duration or failure count")
	}
	d, err := quorum.Deal(m.rand, nil, opts.Shares, opts.Threshold)
	if err != nil {
		return nil, fmt.Errorf("soft: %w", err)
	}
	defer clear(d.Secret)
	master := make([]byte, keySize)
	if _, err := io.ReadFull(m.rand, master); err != nil {
		return nil, fmt.Errorf("soft: random master key: %w", err)
	}
	defer clear(master)
	rec := &partitionRecord{
		Name:            opts.Partition,
		Policy:          opts.Policy,
		Threshold:       opts.Threshold,
		Shares:          opts.Shares,
		Generation:      1,
		CollectWindow:   opts.CollectWindow,
		MaxFailures:     opts.MaxFailures,
		LockoutDuration: opts.LockoutDuration,
		Created:         m.clock().UTC(),
	}
	// The transport recipient is bound into the master key's wrapping, so
	// it is made first.
	if err := rec.newTransport(m.rand, master); err != nil {
		return nil, err
	}
	if err := rec.wrapMaster(m.rand, m.meta.ID, d, master); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, errClosed
	}
	if _, err := m.loadPartition(rec.Name); err == nil {
		return nil, fmt.Errorf("soft: partition %s: %w", rec.Name, hsm.ErrPartitionExists)
	} else if !errors.Is(err, hsm.ErrNoPartition) {
		return nil, err
	}
	// The init record comes before the partition (see audited), so the
	// partition is stored only once its record is: an init that fails
	// leaves no partition behind, and one that succeeds returns its shares.
	fields := map[string]string{
		"shares": fmt.Sprint(rec.Shares), "threshold": fmt.Sprint(rec.Threshold),
		"policy": string(rec.Policy), "generation": "1", "transport_key": rec.TransportRecipient,
	}
	err = m.audited("init", rec.Name, fields, func() error {
		return m.update("init", func(tx *bolt.Tx) error {
			b := tx.Bucket(partitionsBucket)
			if b.Get([]byte(rec.Name)) != nil {
				return hsm.ErrPartitionExists
			}
			rec.Order = b.Stats().KeyN + 1
			v, err := json.Marshal(rec)
			if err != nil {
				return err
			}
			return b.Put([]byte(rec.Name), v)
		})
	})
	if errors.Is(err, hsm.ErrPartitionExists) {
		return nil, fmt.Errorf("soft: partition %s: %w", rec.Name, hsm.ErrPartitionExists)
	}
	if err != nil {
		return nil, fmt.Errorf("soft: init partition %s (not created): %w", rec.Name, err)
	}
	return rec.shares(m.meta.ID, d), nil
}

// audited records an event in the audit log, then makes the change it
// records with commit. The record comes first and is durable (committed to
// module.db) before the change, so that a crash in between leaves a record
// of a change that did not happen, never a change without its record. If
// commit fails, a "commit-failed" record naming the first one's sequence
// number and event follows it, as far as the log still takes appends; a
// crash before that leaves the first record alone, so an auditor checks
// the module's state before reading a record as a change made. A commit
// error wrapping hsm.ErrReshareIncomplete (the change failed but may be in
// force) gives the commit-failed record the field result=incomplete.
func (m *Module) audited(event, partition string, fields map[string]string, commit func() error) error {
	ev, err := m.log.Append(event, partition, fields)
	if err != nil {
		return err
	}
	if err := commit(); err != nil {
		fields := map[string]string{"seq": fmt.Sprint(ev.Seq), "event": event, "reason": err.Error()}
		if errors.Is(err, hsm.ErrReshareIncomplete) {
			// Not "nothing changed": the change may be in force.
			fields["result"] = "incomplete"
		}
		_, aerr := m.log.Append("commit-failed", partition, fields)
		if aerr != nil {
			m.logger.Error("soft: an audited change failed to commit and the failure could not be recorded",
				"event", event, "seq", ev.Seq, "err", err, "audit_err", aerr)
		}
		return err
	}
	return nil
}

// update is m.db.Update for the audited change named event.
func (m *Module) update(event string, fn func(*bolt.Tx) error) error {
	err := m.db.Update(func(tx *bolt.Tx) error {
		if m.commitFault != nil {
			if err := m.commitFault(tx, event); err != nil {
				return err
			}
		}
		return fn(tx)
	})
	if err == nil && m.commitLost != nil {
		err = m.commitLost(event)
	}
	return err
}

// Partition returns an existing partition or hsm.ErrNoPartition. The same
// *Partition is returned on every call, so shares presented through one
// value count for all.
func (m *Module) Partition(name string) (hsm.Partition, error) {
	p, err := m.partition(name)
	if err != nil {
		return nil, err
	}
	return p, nil
}

func (m *Module) partition(name string) (*Partition, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, errClosed
	}
	if m.readOnly {
		return nil, fmt.Errorf("soft: partition %s: %w", name, ErrReadOnly)
	}
	if p := m.partitions[name]; p != nil {
		return p, nil
	}
	rec, err := m.loadPartition(name)
	if err != nil {
		return nil, err
	}
	p, err := newPartition(m, rec)
	if err != nil {
		return nil, err
	}
	m.partitions[name] = p
	return p, nil
}

func (m *Module) loadPartition(name string) (*partitionRecord, error) {
	var rec *partitionRecord
	err := m.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(partitionsBucket).Get([]byte(name))
		if v == nil {
			return hsm.ErrNoPartition
		}
		rec = new(partitionRecord)
		return json.Unmarshal(v, rec)
	})
	if errors.Is(err, hsm.ErrNoPartition) {
		return nil, fmt.Errorf("soft: partition %q: %w", name, hsm.ErrNoPartition)
	}
	if err != nil {
		return nil, fmt.Errorf("soft: load partition %s: %w", name, err)
	}
	return rec, nil
}

// Partitions lists partition names in creation order.
func (m *Module) Partitions() ([]string, error) {
	var recs []partitionRecord
	err := m.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(partitionsBucket).ForEach(func(k, v []byte) error {
			var r partitionRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("partition %s: %w", k, err)
			}
			recs = append(recs, r)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("soft: list partitions: %w", err)
	}
	names := make([]string, len(recs))
	slices.SortFunc(recs, func(a, b partitionRecord) int { return a.Order - b.Order })
	for i, r := range recs {
		names[i] = r.Name
	}
	return names, nil
}

var errClosed = errors.New("soft: module is closed")

// Close seals every partition, flushes the audit log and releases the
// module file. It waits for the partitions' operations in progress (share
// presentation, re-share, key storage, destruction and export), not for
// signatures or key generation outside the operation lock; an operation
// that starts later fails, sealed or closed.
func (m *Module) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	parts := make([]*Partition, 0, len(m.partitions))
	for _, p := range m.partitions {
		parts = append(parts, p)
	}
	m.mu.Unlock()
	// Each operation lock is held until the log and the database are
	// closed, so that an operation waiting for it cannot activate or use
	// a partition in between. No operation takes m.mu or a second
	// partition's lock while holding its own, so taking them one after
	// another cannot deadlock; m.mu is released first so that lookups
	// fail fast with errClosed meanwhile.
	for _, p := range parts {
		p.opMu.Lock()
		defer p.opMu.Unlock()
	}
	var errs []error
	for _, p := range parts {
		errs = append(errs, p.seal("module closed"))
	}
	if m.lock != nil {
		errs = append(errs, m.lock.SaveUptime())
	}
	errs = append(errs, m.log.Close(), m.db.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("soft: close: %w", err)
	}
	return nil
}
