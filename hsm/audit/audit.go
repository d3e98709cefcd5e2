// Package audit is an hsmca module's append-only, hash-chained event log,
// kept in a bbolt bucket next to the module's keys.
//
// Each record's hash (SHA-256) covers its sequence number, time, type,
// partition, fields and the previous record's hash, so changing, deleting or
// reordering a record breaks the chain. After every commit the head (record
// count and last hash) is signed with the module's Ed25519 audit key, so
// removing records from the end is detected too: the signed head no longer
// matches the last record.
//
// The audit key is not behind the quorum. A sealed module must still record
// events (rejected shares, lockouts), so the backend keeps the audit key in
// the module's own file, protected only by the file's permissions (0600).
// The trade-off: someone who can write the module file can rewrite the log
// and re-sign its head. What they cannot do is make the rewritten log match a
// head that an auditor already holds, so auditors pin the audit public key
// (printed at module creation) and keep the heads quoted in ceremony
// transcripts; a later log must extend those.
//
// Appends are grouped: concurrent callers' records are committed in one
// bbolt transaction with one head signature, and each caller returns only
// once its record is durable. Begin/Wait lets a caller (a signature) do its
// work while its record is being committed. Once a commit fails, the log
// refuses every later append: a module that cannot audit must not sign.
package audit

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/hsmca/hsmca/hsm"
	bolt "go.etcd.io/bbolt"
)

// Bucket names in the module database.
var (
	recordsBucket = []byte("audit")
	headBucket    = []byte("audit-head")
	headKey       = []byte("head")
)

const (
	recordDomain = "hsmca audit record v1\x00"
	headDomain   = "hsmca audit head v1\x00"
)

// ErrClosed is returned by appends after Close.
var ErrClosed = errors.New("audit: log is closed")

// Options configures a Log. Zero values are usable.
type Options struct {
	// Context binds the head signature to one module (its ID), so that a
	// head of another module's log does not verify.
	Context string
	// Clock stamps records; defaults to time.Now.
	Clock func() time.Time
	// Logger receives commit failures; defaults to discarding.
	Logger *slog.Logger
}

// Log is the module's audit log. It implements hsm.AuditLog and is safe
// for concurrent use.
type Log struct {
	db     *bolt.DB
	key    ed25519.PrivateKey
	pub    ed25519.PublicKey
	ctx    string
	clock  func() time.Time
	logger *slog.Logger

	mu      sync.Mutex
	seq     uint64   // last assigned sequence number
	prev    [32]byte // hash of the last assigned record
	pending []*Pending
	broken  error // sticky: set when a commit fails or the stored log is inconsistent
	closed  bool

	kick chan struct{}
	stop chan struct{}
	done chan struct{}
}

var _ hsm.AuditLog = (*Log)(nil)

// storedHead is the signed head as kept in the database.
type storedHead struct {
	Count uint64 `json:"count"`
	Hash  string `json:"hash"`
	Sig   []byte `json:"sig"`
}

// Open attaches to the log in db (creating its buckets) and starts the
// committer. If the stored records do not match the signed head, Open still
// succeeds, so that Verify can report where, but every append fails.
func Open(db *bolt.DB, key ed25519.PrivateKey, opts Options) (*Log, error) {
	if db == nil || len(key) != ed25519.PrivateKeySize {
		return nil, errors.New("audit: need a database and an Ed25519 private key")
	}
	l := &Log{
		db:     db,
		key:    key,
		pub:    key.Public().(ed25519.PublicKey),
		ctx:    opts.Context,
		clock:  opts.Clock,
		logger: opts.Logger,
		kick:   make(chan struct{}, 1),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	if l.clock == nil {
		l.clock = time.Now
	}
	if l.logger == nil {
		l.logger = slog.New(slog.DiscardHandler)
	}
	err := db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(recordsBucket); err != nil {
			return err
		}
		_, err := tx.CreateBucketIfNotExists(headBucket)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("audit: create buckets: %w", err)
	}
	if err := l.loadTail(); err != nil {
		return nil, err
	}
	go l.committer()
	return l, nil
}

// loadTail positions the chain after the last stored record and checks it
// against the signed head.
func (l *Log) loadTail() error {
	return l.db.View(func(tx *bolt.Tx) error {
		head, herr := readHead(tx)
		k, v := tx.Bucket(recordsBucket).Cursor().Last()
		if k == nil && head == nil {
			return nil // a new log
		}
		if herr != nil {
			l.broken = herr
			return nil
		}
		if head == nil {
			l.broken = &hsm.AuditError{Seq: 1, Reason: "records present but no signed head"}
			return nil
		}
		if err := l.checkHeadSig(head, l.pub); err != nil {
			l.broken = err
			return nil
		}
		var ev hsm.AuditEvent
		if k == nil || len(k) != 8 || json.Unmarshal(v, &ev) != nil {
			l.broken = &hsm.AuditError{Seq: head.Count, Reason: "last record missing or unreadable"}
			return nil
		}
		h, err := recordHash(&ev)
		if err != nil || hex.EncodeToString(h[:]) != ev.Hash || ev.Seq != head.Count || ev.Hash != head.Hash {
			l.broken = &hsm.AuditError{Seq: ev.Seq, Reason: "last record does not match the signed head"}
			return nil
		}
		l.seq, l.prev = ev.Seq, h
		return nil
	})
}

// PublicKey returns the audit key that signs the head.
func (l *Log) PublicKey() ed25519.PublicKey { return l.pub }

// Pending is a record handed to the committer. Wait returns once it is
// durable (or failed).
type Pending struct {
	Event hsm.AuditEvent
	raw   []byte
	err   error
	done  chan struct{}
}

// Wait blocks until the record is committed and returns the commit error.
func (p *Pending) Wait() error {
	<-p.done
	return p.err
}

// Append records one event and returns it once it is durable.
func (l *Log) Append(typ, partition string, fields map[string]string) (hsm.AuditEvent, error) {
	p, err := l.Begin(typ, partition, fields)
	if err != nil {
		return hsm.AuditEvent{}, err
	}
	if err := p.Wait(); err != nil {
		return hsm.AuditEvent{}, err
	}
	return p.Event, nil
}

// Begin assigns the event its place in the chain and queues it for commit
// without waiting. The caller must call Wait before it acts on the event's
// outcome (for a signature: before it releases the signature).
func (l *Log) Begin(typ, partition string, fields map[string]string) (*Pending, error) {
	if typ == "" {
		return nil, errors.New("audit: event type is empty")
	}
	now := l.clock().UTC()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, ErrClosed
	}
	if l.broken != nil {
		return nil, fmt.Errorf("audit: log refuses appends: %w", l.broken)
	}
	ev := hsm.AuditEvent{
		Seq:       l.seq + 1,
		Time:      now,
		Type:      validUTF8(typ),
		Partition: validUTF8(partition),
		Fields:    copyFields(fields),
		Prev:      hex.EncodeToString(l.prev[:]),
	}
	h, err := recordHash(&ev)
	if err != nil {
		return nil, err
	}
	ev.Hash = hex.EncodeToString(h[:])
	raw := appendRecord(make([]byte, 0, 512), &ev)
	l.seq, l.prev = ev.Seq, h
	p := &Pending{Event: ev, raw: raw, done: make(chan struct{})}
	l.pending = append(l.pending, p)
	select {
	case l.kick <- struct{}{}:
	default:
	}
	return p, nil
}

func copyFields(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[validUTF8(k)] = validUTF8(v)
	}
	return out
}

// commitDelay caps how long the committer waits, after a commit, for the
// callers it just released to queue their next records (see committer).
const commitDelay = 500 * time.Microsecond

// committer writes queued records, as many as have accumulated, in one
// transaction each time. After a commit of n records it waits (at most
// commitDelay) until n records are queued again: the callers it has just
// released usually come straight back, and without the wait their records
// would miss the next commit and wait for two.
func (l *Log) committer() {
	defer close(l.done)
	released := 0
	for {
		select {
		case <-l.kick:
		case <-l.stop:
			l.flush()
			return
		}
		if released > 1 {
			l.gather(released)
		}
		released = l.flush()
	}
}

// gather waits until n records are queued, commitDelay has passed or the
// log is closing.
func (l *Log) gather(n int) {
	timer := time.NewTimer(commitDelay)
	defer timer.Stop()
	for {
		l.mu.Lock()
		queued := len(l.pending)
		l.mu.Unlock()
		if queued >= n {
			return
		}
		select {
		case <-l.kick:
		case <-timer.C:
			return
		case <-l.stop:
			return
		}
	}
}

// flush commits what is queued and returns how many records it released.
func (l *Log) flush() int {
	l.mu.Lock()
	batch := l.pending
	l.pending = nil
	broken := l.broken
	l.mu.Unlock()
	if len(batch) == 0 {
		return 0
	}
	err := broken
	if err == nil {
		err = l.commit(batch)
		if err != nil {
			err = fmt.Errorf("audit: commit records %d..%d: %w", batch[0].Event.Seq, batch[len(batch)-1].Event.Seq, err)
			l.logger.Error("audit commit failed; module refuses further audited operations", "err", err)
			l.mu.Lock()
			if l.broken == nil {
				l.broken = err
			}
			l.mu.Unlock()
		}
	}
	for _, p := range batch {
		p.err = err
		close(p.done)
	}
	return len(batch)
}

func (l *Log) commit(batch []*Pending) error {
	last := batch[len(batch)-1].Event
	sh := storedHead{Count: last.Seq, Hash: last.Hash}
	sh.Sig = ed25519.Sign(l.key, l.headMessage(sh.Count, sh.Hash))
	hv, err := json.Marshal(sh)
	if err != nil {
		return err
	}
	return l.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(recordsBucket)
		b.FillPercent = 1.0 // keys only ever grow: pack pages
		for _, p := range batch {
			if err := b.Put(seqKey(p.Event.Seq), p.raw); err != nil {
				return err
			}
		}
		return tx.Bucket(headBucket).Put(headKey, hv)
	})
}

// Close commits what is queued, stops the committer and refuses later
// appends. It does not close the database.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.mu.Unlock()
	close(l.stop)
	<-l.done
	return nil
}

func seqKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64(nil, seq)
}

func (l *Log) headMessage(count uint64, hash string) []byte {
	m := []byte(headDomain)
	m = appendString(m, l.ctx)
	m = binary.BigEndian.AppendUint64(m, count)
	return appendString(m, hash)
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// recordHash is SHA-256 over an unambiguous encoding of every field but
// Hash itself.
func recordHash(ev *hsm.AuditEvent) ([32]byte, error) {
	prev, err := hex.DecodeString(ev.Prev)
	if err != nil || len(prev) != 32 {
		return [32]byte{}, errors.New("audit: malformed previous hash")
	}
	b := []byte(recordDomain)
	b = binary.BigEndian.AppendUint64(b, ev.Seq)
	b = binary.BigEndian.AppendUint64(b, uint64(ev.Time.UnixNano()))
	b = appendString(b, ev.Type)
	b = appendString(b, ev.Partition)
	keys := sortedKeys(ev.Fields)
	b = binary.BigEndian.AppendUint32(b, uint32(len(keys)))
	for _, k := range keys {
		b = appendString(b, k)
		b = appendString(b, ev.Fields[k])
	}
	b = append(b, prev...)
	return sha256.Sum256(b), nil
}

func readHead(tx *bolt.Tx) (*storedHead, error) {
	v := tx.Bucket(headBucket).Get(headKey)
	if v == nil {
		return nil, nil
	}
	var h storedHead
	if err := json.Unmarshal(v, &h); err != nil {
		return nil, &hsm.AuditError{Seq: 0, Reason: "signed head unreadable"}
	}
	return &h, nil
}

func (l *Log) checkHeadSig(h *storedHead, pub ed25519.PublicKey) error {
	if !ed25519.Verify(pub, l.headMessage(h.Count, h.Hash), h.Sig) {
		return &hsm.AuditError{Seq: h.Count, Reason: "head signature does not verify with the audit key"}
	}
	return nil
}

// Head returns the committed count and head hash.
func (l *Log) Head() (hsm.AuditHead, error) {
	out := hsm.AuditHead{PublicKey: base64.StdEncoding.EncodeToString(l.pub), Hash: hex.EncodeToString(make([]byte, 32))}
	err := l.db.View(func(tx *bolt.Tx) error {
		h, err := readHead(tx)
		if err != nil || h == nil {
			return err
		}
		out.Count, out.Hash = h.Count, h.Hash
		return nil
	})
	if err != nil {
		return hsm.AuditHead{}, fmt.Errorf("audit: read head: %w", err)
	}
	return out, nil
}

// Events returns committed records with Seq >= from, at most limit (0: all).
func (l *Log) Events(from uint64, limit int) ([]hsm.AuditEvent, error) {
	var out []hsm.AuditEvent
	err := l.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(recordsBucket).Cursor()
		for k, v := c.Seek(seqKey(from)); k != nil; k, v = c.Next() {
			if limit > 0 && len(out) >= limit {
				break
			}
			var ev hsm.AuditEvent
			if err := json.Unmarshal(v, &ev); err != nil {
				return &hsm.AuditError{Seq: binary.BigEndian.Uint64(k), Reason: "record unreadable"}
			}
			out = append(out, ev)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("audit: read events: %w", err)
	}
	return out, nil
}

// Verify checks every committed record and the signed head with the log's
// own audit key.
func (l *Log) Verify() (hsm.AuditHead, error) { return l.VerifyWithKey(l.pub) }

// VerifyWithKey is Verify against a pinned audit public key (the one an
// auditor recorded at module creation).
func (l *Log) VerifyWithKey(pub ed25519.PublicKey) (hsm.AuditHead, error) {
	if len(pub) != ed25519.PublicKeySize {
		return hsm.AuditHead{}, errors.New("audit: pinned public key has the wrong size")
	}
	out := hsm.AuditHead{PublicKey: base64.StdEncoding.EncodeToString(pub)}
	err := l.db.View(func(tx *bolt.Tx) error {
		var prev [32]byte
		var n uint64
		c := tx.Bucket(recordsBucket).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			n++
			if len(k) != 8 {
				return &hsm.AuditError{Seq: n, Reason: "malformed record key"}
			}
			if got := binary.BigEndian.Uint64(k); got != n {
				return &hsm.AuditError{Seq: n, Reason: fmt.Sprintf("record missing (next stored record is %d)", got)}
			}
			var ev hsm.AuditEvent
			if err := json.Unmarshal(v, &ev); err != nil {
				return &hsm.AuditError{Seq: n, Reason: "record unreadable"}
			}
			if ev.Seq != n {
				return &hsm.AuditError{Seq: n, Reason: fmt.Sprintf("record says it is number %d (moved)", ev.Seq)}
			}
			if ev.Prev != hex.EncodeToString(prev[:]) {
				return &hsm.AuditError{Seq: n, Reason: "previous-hash link broken"}
			}
			h, err := recordHash(&ev)
			if err != nil {
				return &hsm.AuditError{Seq: n, Reason: err.Error()}
			}
			if hex.EncodeToString(h[:]) != ev.Hash {
				return &hsm.AuditError{Seq: n, Reason: "record content does not match its hash (altered)"}
			}
			prev = h
		}
		head, err := readHead(tx)
		if err != nil {
			return err
		}
		if head == nil {
			if n == 0 {
				out.Hash = hex.EncodeToString(prev[:])
				return nil
			}
			return &hsm.AuditError{Seq: n, Reason: "no signed head"}
		}
		if err := l.checkHeadSig(head, pub); err != nil {
			return err
		}
		switch {
		case head.Count > n:
			return &hsm.AuditError{Seq: n + 1, Reason: fmt.Sprintf("record missing: the signed head counts %d records, %d are stored (truncated)", head.Count, n)}
		case head.Count < n:
			return &hsm.AuditError{Seq: head.Count + 1, Reason: fmt.Sprintf("records after the signed head (head counts %d, %d stored)", head.Count, n)}
		case head.Hash != hex.EncodeToString(prev[:]):
			return &hsm.AuditError{Seq: n, Reason: "last record does not match the signed head"}
		}
		out.Count, out.Hash = n, head.Hash
		return nil
	})
	if err != nil {
		return hsm.AuditHead{}, err
	}
	return out, nil
}

// VerifyExtends verifies the log as Verify does and also that it extends a
// head recorded earlier (one printed by a previous verify or quoted in a
// ceremony transcript): the log holds at least known.Count records and
// record known.Count still has hash known.Hash. This catches a log that was
// rewritten and re-signed with the file-resident audit key. If
// known.PublicKey is set, it must be the log's audit key.
func (l *Log) VerifyExtends(known hsm.AuditHead) (hsm.AuditHead, error) {
	if known.PublicKey != "" && known.PublicKey != base64.StdEncoding.EncodeToString(l.pub) {
		return hsm.AuditHead{}, &hsm.AuditError{Seq: 0, Reason: "the audit key is not the one pinned"}
	}
	h, err := l.Verify()
	if err != nil {
		return hsm.AuditHead{}, err
	}
	if known.Count == 0 {
		return h, nil
	}
	if known.Count > h.Count {
		return hsm.AuditHead{}, &hsm.AuditError{Seq: h.Count + 1, Reason: fmt.Sprintf("record missing: a known head counts %d records, the log holds %d (truncated)", known.Count, h.Count)}
	}
	evs, err := l.Events(known.Count, 1)
	if err != nil {
		return hsm.AuditHead{}, err
	}
	if len(evs) != 1 || evs[0].Hash != known.Hash {
		return hsm.AuditHead{}, &hsm.AuditError{Seq: known.Count, Reason: "record does not match the known head (log rewritten)"}
	}
	return h, nil
}
