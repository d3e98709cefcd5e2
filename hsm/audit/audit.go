// Package audit is an hsmca module's append-only, hash-chained event log.
//
// Each record's hash (SHA-256) covers its sequence number, time, type,
// partition, fields and the previous record's hash, so changing, deleting or
// reordering a record breaks the chain. The head (record count and last
// hash) is signed with the module's Ed25519 audit key, so removing records
// from the end is detected too: the signed head no longer matches the last
// record. The newest head is either the one stored with the last database
// record or the one the flusher keeps in the segment's two head slots,
// whichever counts more records.
//
// # Two stores, one chain
//
// Signature records, one per signature the module makes, are the hot path.
// They go to an append-only segment file beside the database (SegmentFile,
// a compact binary, length-prefixed, CRC-checked frame each; see
// segment.go). BeginSign gives the record its place in the chain (one
// SHA-256, no allocation) and writes its frame: on Linux it copies it into
// a shared mapping of the file, allocated ahead of the records, which puts
// it in the kernel's page cache without a system call (segwrite_linux.go;
// elsewhere one write(2)). The caller signs; Wait only enforces the bound
// on unsynced records below. Every other
// event (init, shares, activation, seal, keys, export, lockout) is a JSON
// record in the database's "audit" bucket, committed together with a new
// signed head. Both kinds take their sequence numbers from one counter and
// their "prev" from the record before, whatever store that is in, so Head,
// Events and Verify see one chain.
//
// # Durability
//
//   - Process crash (kill -9): loses nothing acknowledged. A signature
//     record is in the kernel (in the page cache, through the mapping or
//     write(2)) before BeginSign returns, so before the signer can release
//     the signature; a database record is committed (fsynced) before
//     Append returns.
//   - Power loss: may lose signature records that were written but not yet
//     synced. A background flusher syncs the segment (one fsync; on Linux
//     submitted through AIO and waited for in the runtime's poller, see
//     fsync_aio_linux.go) at most every FlushInterval (default 20 ms) once
//     records are waiting, then
//     signs a new head into a head slot, which the next sync makes durable.
//     A signer that finds the sync overdue (4 intervals: the flusher was
//     not scheduled in time) does it itself. Wait blocks a signer while
//     more than MaxUnsynced (default 4096) records are ahead of the last
//     sync and syncs itself, like an HSM's "force audit" mode, so a power
//     loss loses the records since the last sync (normally the last few
//     tens of milliseconds) and never more than MaxUnsynced. Before a
//     database record is committed the segment is synced, so a power loss
//     never leaves a gap inside the chain.
//   - What a signature produced and is kept: SyncWritten syncs at once
//     (sharing the sync with concurrent callers). The CA calls it before
//     it stores or hands out a certificate, precertificate or CRL
//     (ca.AuditSyncer), so the interval bounds only signatures whose
//     product nobody stores, such as OCSP responses: no certificate the
//     CA holds can lose the record of its signature to a power loss.
//
// The interval trades that bound for throughput. Each sync costs more
// than its system call on a small machine: the kernel's writeback and the
// disk flush slow the signing threads on the other CPUs. Measured with
// BenchmarkSignRatio (hsm/pkcs11), 3 alternated runs of each build: the
// PKCS#11 wrapper's overhead at 2 goroutines was 10.6 % (P-256) and
// 11.7 % (RSA-2048) with a 5 ms interval, 3.9 % and 4.6 % with 20 ms.
//
// # Crashes and what Open does
//
// Open writes nothing to a log that exists (it only creates the buckets
// of a new one); the first append of the process (Append, BeginSign,
// Recover) creates the segment, or upgrades an older one, before it
// writes. So `hsmca hsm audit verify` and `list` leave a
// module's files as they found them.
//
// Records written after the last signed head (a crash between a write and
// the next flush) are checked link by link when the log is opened, counted
// by Head, Events and Verify as checked, and covered by a new signed head
// at the first flush after the process's first append. The records end at a
// zero frame header (the space allocated ahead of them). If the segment
// ends in a torn record (a frame cut short or damaged, or bytes other than
// zeros after the end: a power loss that kept some of the unsynced pages,
// or a kill during a copy), Open leaves it in
// place: Verify reports it as an *hsm.AuditError ("torn") naming the
// record's sequence number, and the next append (or Recover) records an
// "audit-recover" event naming the lost record, offset and size, then cuts
// the torn bytes off, after which the log verifies again with that event in
// it. Damage inside the signed part of the log, or complete records after
// the head that do not chain, are tampering, not a crash: Verify names the
// first bad record. Open reads only the last signed record and the records
// after the head, so it refuses every append when the damage is there;
// damage further back is found by Verify (`hsmca hsm audit verify`), not
// at Open. Space is always allocated at least a frame header beyond the
// last record, so that a kill -9 never leaves a record ending too close to
// the end of the file to read its end.
//
// # What is cut off the end
//
// The segment's header holds a random segment ID, which the database
// records in the transaction of the first database record after the
// segment is created (see segment.go); a module's first database record
// (init, activation) comes before its first signature. A segment that is
// missing, cut inside its header or carries another ID, once the database
// records one (or holds a head written since segments exist), is lost
// evidence: Open never creates one in its place, Verify reports it, every
// append fails. A log written before segment IDs opens as before, and its
// next database record gives the segment an ID and stores it.
//
// Each database record is committed with a database head that counts it,
// so database records without that head, or after it, are records cut off
// the end with it, whatever head a segment slot still holds. What the log
// cannot tell from a crash is a slot head removed (zeroed or damaged: a
// torn slot write looks the same) with the records only it covered, or the
// whole module rolled back to an older copy: that is found only against a
// head kept outside the module (VerifyExtends, `hsmca hsm audit verify
// --known-head`).
//
// # The audit key
//
// The audit key is not behind the quorum. A sealed module must still record
// events (rejected shares, lockouts), so the backend keeps the audit key in
// the module's own file, protected only by the file's permissions (0600).
// The trade-off: someone who can write the module files can rewrite the log
// and re-sign its head. What they cannot do is make the rewritten log match a
// head that an auditor already holds, so auditors pin the audit public key
// (printed at module creation) and keep the heads quoted in ceremony
// transcripts; a later log must extend those (VerifyExtends).
//
// Once a write, sync or commit fails, the log refuses every later append: a
// module that cannot audit must not sign. A fault on the mapped segment (an
// I/O error on a page, or the file cut short under the log: SIGBUS) is
// such a failed write, not a crash of the process.
package audit

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hsmca/hsmca/hsm"
	bolt "go.etcd.io/bbolt"
)

// SegmentFile is the default name of the signature segment, in the
// database's directory.
const SegmentFile = "audit.seg"

// Bucket names in the module database.
var (
	recordsBucket = []byte("audit")
	headBucket    = []byte("audit-head")
	headKey       = []byte("head")
	// segmentKey, in headBucket, records the segment's ID (segmentMarker).
	segmentKey = []byte("segment")
)

const (
	recordDomain = "hsmca audit record v1\x00"
	headDomain   = "hsmca audit head v1\x00"
)

// Defaults for Options.
const (
	DefaultFlushInterval = 20 * time.Millisecond
	DefaultMaxUnsynced   = 4096
)

// ErrClosed is returned by appends after Close.
var ErrClosed = errors.New("audit: log is closed")

// Options configures a Log. Zero values are usable.
type Options struct {
	// Context binds the head signature and the segment to one module (its
	// ID), so that another module's log does not verify. At most 255 bytes.
	Context string
	// Clock stamps records; defaults to time.Now.
	Clock func() time.Time
	// Rand makes the segment's ID; defaults to crypto/rand.Reader.
	Rand io.Reader
	// Logger receives write, sync and commit failures; defaults to
	// discarding.
	Logger *slog.Logger
	// Segment is the path of the signature segment file; defaults to
	// SegmentFile in the database's directory. It is created with mode
	// 0600, by the first append (see Open).
	Segment string
	// FlushInterval is the shortest time between two syncs of the
	// segment; default DefaultFlushInterval.
	FlushInterval time.Duration
	// MaxUnsynced bounds the signature records written but not yet synced
	// (what a power loss can take); Wait blocks beyond it. Default
	// DefaultMaxUnsynced.
	MaxUnsynced int
}

// Log is the module's audit log. It implements hsm.AuditLog and is safe
// for concurrent use.
type Log struct {
	db          *bolt.DB
	key         ed25519.PrivateKey
	pub         ed25519.PublicKey
	ctx         string
	clock       func() time.Time
	rand        io.Reader
	logger      *slog.Logger
	segPath     string
	hdrLen      int64
	interval    time.Duration
	maxUnsynced uint64

	// Lock order: flushMu, mu, syncMu.
	//
	// flushMu serialises what syncs the segment or commits to the
	// database: flushes, Append, Recover, Close.
	flushMu   sync.Mutex
	headSeq   uint64 // count of the stored head
	syncedOff int64  // segment bytes known to be synced
	slotNext  int    // the head slot the next flush writes
	slotDirty bool   // a head slot was written since the last sync
	// markerKnown: the database records segID (segmentKey); otherwise the
	// next database record stores it.
	markerKnown bool

	// mu guards the chain's position and the segment's write end.
	// Signers hold it for one hash, one encoding and one copy.
	mu      sync.Mutex
	seq     uint64     // last record, written or committed
	prev    [32]byte   // hash of record seq
	frame   []byte     // scratch for BeginSign's frame
	seg     *os.File   // nil while the segment does not exist yet (or is missing)
	w       *segWriter // nil until the first append readies the segment (prepareLocked)
	off     int64      // end of the last complete record written to the segment
	lastRec int64      // offset of the segment's last written record (0: none)
	broken  error      // sticky: a failed write or commit, or a log that does not verify
	torn    *tornTail  // a damaged segment end found by Open, not yet cut
	closed  bool

	// What Open found, for prepareLocked and the readers.
	segID    [segIDLen]byte
	segFresh bool            // the segment is to be created (none yet, or cut short while being created)
	segStale bool            // its header is to be rewritten (v2 magic, or no ID yet)
	segErr   *hsm.AuditError // the segment is missing, replaced or not this log's
	openTail *storedHead     // records after the signed head, checked link by link, not yet covered by one

	written   atomic.Uint64 // seq, for Wait
	synced    atomic.Uint64 // records up to here are synced or committed
	lastFlush atomic.Int64  // when the last flush started (Unix ns)
	failed    atomic.Bool   // broken is set
	scheduled atomic.Bool   // the flusher has been kicked and not yet started a flush
	waiters   atomic.Int32
	syncMu    sync.Mutex // with syncCond: signers waiting for the flusher
	syncCond  *sync.Cond

	aio *aioSyncer // nil: sync with fsync(2); guarded by flushMu

	kick chan struct{}
	stop chan struct{}
	done chan struct{}
}

var _ hsm.AuditLog = (*Log)(nil)

// tornTail is a segment end that holds no complete, well-formed frame.
type tornTail struct {
	seq    uint64 // the number the damaged record would have had
	off    int64
	size   int64 // bytes from off to the end of the file
	reason string
}

func (t *tornTail) auditError() *hsm.AuditError {
	return &hsm.AuditError{Seq: t.seq, Reason: fmt.Sprintf(
		"torn record at the end of the audit segment (offset %d, %d bytes: %s), left by a crash during a write; the next append records an audit-recover event and cuts it off",
		t.off, t.size, t.reason)}
}

// storedHead is the signed head as kept in the database. Segment and
// SegmentLast locate the segment records it covers; they are hints for
// Open and Verify, not signed (the count and hash commit to everything).
type storedHead struct {
	Count       uint64 `json:"count"`
	Hash        string `json:"hash"`
	Sig         []byte `json:"sig"`
	Segment     int64  `json:"segment,omitempty"`      // end of the covered segment records
	SegmentLast int64  `json:"segment_last,omitempty"` // offset of the last of them
}

// syncOpenedSegment syncs the segment Open found records after the head
// in; a test seam (a read-only copy's media may refuse fsync).
var syncOpenedSegment = (*os.File).Sync

// Open attaches to the log in db and its segment file and starts the
// flusher. Open writes nothing to a log that exists (it creates the
// buckets of a new one): it reads the log, and the first append (Append,
// BeginSign, Recover) creates the segment, or upgrades an older one,
// before it writes. So a process that only reads the log (`hsmca hsm
// audit verify`, `list`) leaves it as it was.
//
// If the stored records do not match the signed head, or the segment is
// missing, replaced or cut short while the database records that it
// exists, Open still succeeds, so that Verify can report where, but every
// append fails. See the package doc for what Open does after a crash.
func Open(db *bolt.DB, key ed25519.PrivateKey, opts Options) (*Log, error) {
	if db == nil || len(key) != ed25519.PrivateKeySize {
		return nil, errors.New("audit: need a database and an Ed25519 private key")
	}
	if len(opts.Context) > 255 {
		return nil, errors.New("audit: context longer than 255 bytes")
	}
	if opts.FlushInterval < 0 || opts.MaxUnsynced < 0 {
		return nil, errors.New("audit: negative flush interval or unsynced bound")
	}
	l := &Log{
		db:          db,
		key:         key,
		pub:         key.Public().(ed25519.PublicKey),
		ctx:         opts.Context,
		clock:       opts.Clock,
		rand:        opts.Rand,
		logger:      opts.Logger,
		segPath:     opts.Segment,
		interval:    opts.FlushInterval,
		maxUnsynced: uint64(opts.MaxUnsynced),
		frame:       make([]byte, 0, maxFrameLen),
		kick:        make(chan struct{}, 1),
		stop:        make(chan struct{}),
		done:        make(chan struct{}),
	}
	l.syncCond = sync.NewCond(&l.syncMu)
	if l.clock == nil {
		l.clock = time.Now
	}
	if l.rand == nil {
		l.rand = rand.Reader
	}
	if l.logger == nil {
		l.logger = slog.New(slog.DiscardHandler)
	}
	if l.segPath == "" {
		l.segPath = filepath.Join(filepath.Dir(db.Path()), SegmentFile)
	}
	if l.interval == 0 {
		l.interval = DefaultFlushInterval
	}
	if l.maxUnsynced == 0 {
		l.maxUnsynced = DefaultMaxUnsynced
	}
	l.hdrLen = segHeaderLen
	if err := createBuckets(db); err != nil {
		return nil, fmt.Errorf("audit: create buckets: %w", err)
	}
	size, err := l.openSegment()
	if err != nil {
		return nil, err
	}
	if err := l.loadTail(size); err != nil {
		l.closeSegment()
		return nil, err
	}
	if l.seq > l.headSeq {
		// Records after the head may be only in the page cache (a kill
		// -9 keeps them there); sync them before counting them as synced,
		// or a power loss before the first flush could take them and
		// MaxUnsynced new ones. The first flush after the next append
		// covers them with a signed head; until then the readers take
		// them as Open checked them.
		// A reader (read-only database) writes nothing and never counts
		// anything as synced for a later append; its copy may sit on
		// media that refuse fsync (squashfs, iso9660).
		if !l.db.IsReadOnly() {
			if err := syncOpenedSegment(l.seg); err != nil {
				l.closeSegment()
				return nil, fmt.Errorf("audit: sync the records after the head: %w", err)
			}
		}
		l.openTail = &storedHead{Count: l.seq, Hash: hex.EncodeToString(l.prev[:]), Segment: l.off, SegmentLast: l.lastRec}
	}
	l.aio = newAIOSyncer()
	l.written.Store(l.seq)
	l.synced.Store(l.seq)
	l.lastFlush.Store(time.Now().UnixNano())
	if l.broken != nil {
		l.failed.Store(true)
	}
	go l.flusher()
	return l, nil
}

// createBuckets creates the log's buckets in a database that lacks them,
// and writes nothing to one that has them.
func createBuckets(db *bolt.DB) error {
	missing := false
	err := db.View(func(tx *bolt.Tx) error {
		missing = tx.Bucket(recordsBucket) == nil || tx.Bucket(headBucket) == nil
		return nil
	})
	if err != nil || !missing {
		return err
	}
	return db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(recordsBucket); err != nil {
			return err
		}
		_, err := tx.CreateBucketIfNotExists(headBucket)
		return err
	})
}

// PublicKey returns the audit key that signs the head.
func (l *Log) PublicKey() ed25519.PublicKey { return l.pub }

// Append records one event in the database and returns it once it is
// committed. Signature records use BeginSign instead.
func (l *Log) Append(typ, partition string, fields map[string]string) (hsm.AuditEvent, error) {
	if typ == "" {
		return hsm.AuditEvent{}, errors.New("audit: event type is empty")
	}
	now := l.clock().UTC()
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	if err := l.recoverLocked(); err != nil {
		return hsm.AuditEvent{}, err
	}
	return l.appendLocked(now, typ, partition, fields)
}

// appendLocked commits one database record with a new head. Called with
// flushMu held; once no write is in progress it holds mu throughout, so no
// signature record can come between this record and the one before.
func (l *Log) appendLocked(now time.Time, typ, partition string, fields map[string]string) (hsm.AuditEvent, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return hsm.AuditEvent{}, ErrClosed
	}
	if l.broken != nil {
		return hsm.AuditEvent{}, fmt.Errorf("audit: log refuses appends: %w", l.broken)
	}
	if err := l.prepareLocked(); err != nil {
		err = fmt.Errorf("audit: %w", err)
		l.logger.Error("audit segment cannot be prepared; module refuses further audited operations", "err", err)
		l.failLocked(err)
		return hsm.AuditEvent{}, err
	}
	// The signature records before this one must not be lost to a power
	// failure that this record survives: that would leave a gap.
	if l.off > l.syncedOff {
		if err := l.seg.Sync(); err != nil {
			err = fmt.Errorf("audit: sync segment: %w", err)
			l.failLocked(err)
			return hsm.AuditEvent{}, err
		}
		l.syncedOff = l.off
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
		return hsm.AuditEvent{}, err
	}
	ev.Hash = hex.EncodeToString(h[:])
	raw := appendRecord(make([]byte, 0, 512), &ev)
	hv, err := json.Marshal(l.signHead(ev.Seq, h, l.off, l.lastRec))
	if err != nil {
		return hsm.AuditEvent{}, err
	}
	var mv []byte // the segment's ID, with the first record after it got one
	if !l.markerKnown {
		if mv, err = json.Marshal(segmentMarker{ID: hex.EncodeToString(l.segID[:])}); err != nil {
			return hsm.AuditEvent{}, err
		}
	}
	err = l.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(recordsBucket)
		b.FillPercent = 1.0 // keys only ever grow: pack pages
		if err := b.Put(seqKey(ev.Seq), raw); err != nil {
			return err
		}
		if mv != nil {
			if err := tx.Bucket(headBucket).Put(segmentKey, mv); err != nil {
				return err
			}
		}
		return tx.Bucket(headBucket).Put(headKey, hv)
	})
	if err != nil {
		err = fmt.Errorf("audit: commit record %d: %w", ev.Seq, err)
		l.logger.Error("audit commit failed; module refuses further audited operations", "err", err)
		l.failLocked(err)
		return hsm.AuditEvent{}, err
	}
	l.seq, l.prev, l.headSeq, l.markerKnown = ev.Seq, h, ev.Seq, true
	l.written.Store(ev.Seq)
	l.markSynced(ev.Seq)
	return ev, nil
}

// Recover readies the segment for writing (see Open) and cuts off a torn
// segment end found by Open, after recording an "audit-recover" event that
// names the lost record, its offset and size. Appends do it by themselves;
// Recover is for tools that want it done first. On a log that refuses
// appends, or with nothing torn, it cuts nothing.
func (l *Log) Recover() error {
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	l.mu.Lock()
	var err error
	if !l.closed && l.broken == nil {
		if err = l.prepareLocked(); err != nil {
			err = fmt.Errorf("audit: %w", err)
			l.failLocked(err)
		}
	}
	l.mu.Unlock()
	if err != nil {
		return err
	}
	return l.recoverLocked()
}

func (l *Log) recoverLocked() error {
	l.mu.Lock()
	t := l.torn
	l.mu.Unlock()
	if t == nil {
		return nil
	}
	// The event first: if the process dies before the cut, the next Open
	// finds the same torn end and records it again, rather than not at all.
	_, err := l.appendLocked(l.clock().UTC(), "audit-recover", "", map[string]string{
		"torn_seq": fmt.Sprint(t.seq), "offset": fmt.Sprint(t.off), "bytes": fmt.Sprint(t.size), "reason": t.reason,
	})
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	err = l.w.truncate(l.off)
	if err == nil {
		err = l.seg.Sync()
	}
	if err != nil {
		err = fmt.Errorf("audit: cut torn segment end: %w", err)
		l.failLocked(err)
		return err
	}
	l.logger.Warn("audit: cut a torn record off the segment end", "seq", t.seq, "offset", t.off, "bytes", t.size)
	l.torn = nil
	return nil
}

// failLocked makes the log refuse appends. Called with mu held.
func (l *Log) failLocked(err error) {
	if l.broken == nil {
		l.broken = err
	}
	l.failed.Store(true)
	l.wakeWaiters()
}

// Close syncs what is written, stops the flusher and refuses later
// appends. It does not close the database.
func (l *Log) Close() error {
	l.flushMu.Lock()
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		l.flushMu.Unlock()
		return nil
	}
	l.closed = true
	wasBroken := l.broken != nil
	l.mu.Unlock()
	ferr := l.syncLocked()
	l.flushMu.Unlock()
	close(l.stop)
	<-l.done
	l.flushMu.Lock()
	if l.aio != nil {
		l.aio.close()
		l.aio = nil
	}
	l.flushMu.Unlock()
	l.mu.Lock()
	var cerr error
	if l.w != nil { // this process wrote to the segment
		werr := l.w.close()
		if st, err := l.seg.Stat(); err == nil && st.Size() > l.off && ferr == nil && l.broken == nil && l.torn == nil {
			// Give back the space allocated ahead of the records.
			werr = errors.Join(werr, l.w.truncate(l.off))
		}
		cerr = werr
	}
	if l.seg != nil {
		cerr = errors.Join(cerr, l.seg.Close())
	}
	l.mu.Unlock()
	l.wakeWaiters()
	if wasBroken {
		ferr = nil
	}
	if err := errors.Join(ferr, cerr); err != nil {
		return fmt.Errorf("audit: close: %w", err)
	}
	return nil
}

func seqKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64(nil, seq)
}

func (l *Log) signHead(count uint64, hash [32]byte, seg, segLast int64) storedHead {
	sh := storedHead{Count: count, Hash: hex.EncodeToString(hash[:]), Segment: seg, SegmentLast: segLast}
	sh.Sig = ed25519.Sign(l.key, l.headMessage(sh.Count, sh.Hash))
	return sh
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

// loadHead returns the newest signed head: the one in the database
// (stored with each database record) or one of the segment's slots
// (stored by flushes), whichever counts more records. Every head present
// must verify with pub, and two heads of the same count must agree.
//
// Each database record is committed in one transaction with a database
// head that counts it, so records without a database head, or after it,
// are records cut off with the head that counted them (a head in a slot
// does not make up for it). A slot that does not read back (bad CRC)
// counts as torn and is passed over: a crash can leave one. So a slot
// head removed with the records it alone covers looks like a crash; what
// finds that is a head an auditor kept (VerifyExtends).
func (l *Log) loadHead(tx *bolt.Tx, ra io.ReaderAt, pub ed25519.PublicKey) (*storedHead, error) {
	best, err := readHead(tx)
	if err != nil {
		return nil, err
	}
	if k, _ := tx.Bucket(recordsBucket).Cursor().Last(); k != nil {
		if len(k) != 8 {
			return nil, &hsm.AuditError{Seq: 0, Reason: "malformed record key"}
		}
		switch last := binary.BigEndian.Uint64(k); {
		case best == nil:
			return nil, &hsm.AuditError{Seq: last + 1, Reason: fmt.Sprintf("the database holds records up to %d but not the signed head stored with them: removed, with the records after it (truncated)", last)}
		case best.Count < last:
			return nil, &hsm.AuditError{Seq: best.Count + 1, Reason: fmt.Sprintf("records after the signed head (head counts %d, the database holds record %d)", best.Count, last)}
		}
	}
	if best != nil {
		if err := l.checkHeadSig(best, pub); err != nil {
			return nil, err
		}
	}
	for _, h := range readSlots(ra) {
		if h == nil {
			continue
		}
		if err := l.checkHeadSig(h, pub); err != nil {
			return nil, err
		}
		switch {
		case best == nil || h.Count > best.Count:
			best = h
		case h.Count == best.Count && h.Hash != best.Hash:
			return nil, &hsm.AuditError{Seq: h.Count, Reason: "two signed heads of the same count disagree"}
		}
	}
	return best, nil
}

// readSlots reads the segment's two head slots; a slot never written, torn
// or missing is nil.
func readSlots(ra io.ReaderAt) [2]*storedHead {
	var out [2]*storedHead
	var b [2 * slotLen]byte
	n, _ := ra.ReadAt(b[:], slotOffset)
	for i := range out {
		if n >= (i+1)*slotLen {
			out[i] = decodeSlot(b[i*slotLen : (i+1)*slotLen])
		}
	}
	return out
}

// nextSlot is the slot a flush overwrites: the one with the older head.
func nextSlot(ra io.ReaderAt) int {
	s := readSlots(ra)
	if s[0] == nil || (s[1] != nil && s[1].Count > s[0].Count) {
		return 0
	}
	return 1
}

func (l *Log) checkHeadSig(h *storedHead, pub ed25519.PublicKey) error {
	if !ed25519.Verify(pub, l.headMessage(h.Count, h.Hash), h.Sig) {
		return &hsm.AuditError{Seq: h.Count, Reason: "head signature does not verify with the audit key"}
	}
	return nil
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

// openSegmentForReading opens the segment for Events and Verify, which read
// it through their own file so that they work on a closed log too. A
// missing file reads as empty.
func (l *Log) openSegmentForReading() (io.ReaderAt, func(), error) {
	f, err := os.Open(l.segPath)
	if errors.Is(err, os.ErrNotExist) {
		return emptyReaderAt{}, func() {}, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("audit: open segment: %w", err)
	}
	return f, func() { f.Close() }, nil
}

type emptyReaderAt struct{}

func (emptyReaderAt) ReadAt([]byte, int64) (int, error) { return 0, io.EOF }
