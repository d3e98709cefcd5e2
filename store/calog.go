package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/hsmca/hsmca/ca"
)

// The CA record log.
//
// A bbolt commit writes its pages and then its meta page, with an fsync
// after each; on the shared test disk that is about 1 ms of waiting and
// 0.4 ms of CPU, and an issuance writes twice (pending record, final
// certificate). CA record writes (ReserveSerial, StoreIssued,
// UpdateRevocation) therefore go to an append-only log first: each write
// is one frame holding the record's whole new state, appended and made
// durable with one fdatasync, which concurrent writers share (group
// commit). The write is acknowledged only after that fdatasync. A
// background folder copies the logged states into bbolt in one commit per
// batch and then deletes the folded log segment.
//
// Until a state is folded, it is in the overlay, an in-memory map serial →
// latest state that every write updates under one mutex (so concurrent
// writers of a serial are ordered as their frames are, and each write's
// check sees the states queued before it). Readers are served only
// durable states: a state whose frame is still queued, or whose write
// failed, is skipped for the serial's previous one. A state leaves the
// overlay only after bbolt holds it, so a reader that misses the overlay
// finds it in bbolt. ListCerts and RevokedSerials fold first and then read
// bbolt alone.
//
// Open replays the log segments left by a crash into bbolt, in order (the
// last state of a serial wins; folding twice is harmless), before anything
// else reads the store. That is right only if no segment outlives a newer
// one whose states bbolt holds: a fold therefore removes every segment
// before the one it started (including any that an earlier, failed fold
// left), oldest first, each removal durable before the next. A frame
// carries a length and a CRC-32C; a torn frame at the end of the newest
// segment is a write that was never acknowledged and is dropped, a bad
// frame in an older segment is corruption and Open refuses the store. (A
// bad frame in the middle of the newest segment cannot be told from a torn
// group write without batch markers, and is read as the torn end.)
//
// Segment files live next to the bbolt file (NAME.calog.SEQ) and are
// covered by its lock. They are created full of zeros (see caSegMinBytes);
// a zero frame header marks the end of what was written. A new segment's directory entry is synced before
// any frame goes into it, and a folded segment's deletion is synced before
// the next fold, so a power loss can neither lose a segment nor bring back
// one whose states bbolt already holds in a newer version.

// caLogSuffix names segment files: the bbolt file's name, this, a number.
const caLogSuffix = ".calog."

// Fold triggers: a fold starts when this many states wait in the overlay,
// or this long after the first one arrived. A fold costs four device
// flushes (the new segment's directory entry, bbolt's two, the old
// segment's removal), which share the disk with the log's fdatasyncs;
// folding less often leaves the issuance path more of the disk.
const (
	caFoldRecords = 2048
	caFoldDelay   = 100 * time.Millisecond
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Segments are written with zeros when created, so that a frame
// overwrites blocks that are allocated and written already and its
// fdatasync flushes only data, with no file-size change for the file
// system's journal to commit (measured: the two writes of an issuance
// about a fifth faster, a third less system CPU). A segment is made twice
// as large as its predecessor's use, within these bounds; frames that do
// not fit extend the file.
const (
	caSegMinBytes = 256 << 10
	caSegMaxBytes = 4 << 20
)

// testHookFold, when set by a test, is called at each stage of a fold
// ("commit" before the bbolt commit, "remove" before deleting segments);
// an error it returns stands for that stage failing.
var testHookFold func(stage string) error

func foldHook(stage string) error {
	if testHookFold == nil {
		return nil
	}
	return testHookFold(stage)
}

// errLogClosed is returned by writes after Close.
var errLogClosed = errors.New("store: closed")

// caLog is the CA record log of one Store.
type caLog struct {
	db   *bolt.DB
	dir  string
	base string // bbolt file name; segments are base+caLogSuffix+number

	mu   sync.Mutex
	cond *sync.Cond // durable, busy, failed or closed changed
	over map[string]*overlayRec

	seg     *os.File
	segNo   uint64
	off     int64  // where the next frames go in seg
	pending []byte // frames queued for the next write, in seq order
	queued  uint64 // seq of the last frame queued
	durable uint64 // seq of the last durable frame
	busy    bool   // a writer is writing and syncing frames
	failed  error  // the log cannot be written any more
	closed  bool

	foldDelay time.Duration // caFoldDelay; tests lengthen it to fold only on demand
	kick      chan struct{} // wakes the folder
	folding   sync.Mutex    // one fold at a time
	done      chan struct{} // closed when the folder exits
	stop      chan struct{}

	closeOnce sync.Once
	closeErr  error
}

// overlayRec is a record state not yet folded into bbolt.
type overlayRec struct {
	rec ca.Record
	enc []byte // caEncodeRecord(rec)
	seq uint64 // frame that wrote it
	// prev is the serial's overlay state before this one, kept while this
	// one is not durable: readers are served the newest durable state
	// (lookup), writers' checks the newest queued one (current).
	prev *overlayRec
}

// openCALog replays the segments a previous process left into db, deletes
// them, and starts an empty log.
func openCALog(db *bolt.DB, path string) (*caLog, error) {
	l := &caLog{
		db:   db,
		dir:  filepath.Dir(path),
		base: filepath.Base(path),
		over: map[string]*overlayRec{},
		kick: make(chan struct{}, 1),

		foldDelay: caFoldDelay,
		done:      make(chan struct{}),
		stop:      make(chan struct{}),
	}
	l.cond = sync.NewCond(&l.mu)
	segs, err := l.segments()
	if err != nil {
		return nil, err
	}
	if err := l.replay(segs); err != nil {
		return nil, err
	}
	if len(segs) > 0 {
		l.segNo = segs[len(segs)-1]
	}
	if err := l.removeSegments(segs); err != nil {
		return nil, err
	}
	if l.seg, err = l.newSegment(l.segNo+1, caSegMinBytes); err != nil {
		return nil, err
	}
	l.segNo++
	go l.folder()
	return l, nil
}

// segments lists the numbers of the segment files on disk, ascending.
func (l *caLog) segments() ([]uint64, error) {
	ents, err := os.ReadDir(l.dir)
	if err != nil {
		return nil, fmt.Errorf("store: read log directory: %w", err)
	}
	prefix := l.base + caLogSuffix
	var out []uint64
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), prefix) {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimPrefix(e.Name(), prefix), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("store: unexpected file %s next to the store", e.Name())
		}
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

func (l *caLog) segPath(n uint64) string {
	return filepath.Join(l.dir, l.base+caLogSuffix+strconv.FormatUint(n, 10))
}

// newSegment creates segment n of size bytes, written with zeros, and
// makes it and its directory entry durable.
func (l *caLog) newSegment(n uint64, size int64) (*os.File, error) {
	f, err := os.OpenFile(l.segPath(n), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store: create log segment: %w", err)
	}
	size = min(max(size, caSegMinBytes), caSegMaxBytes)
	zero := make([]byte, 64<<10)
	for off := int64(0); off < size && err == nil; off += int64(len(zero)) {
		_, err = f.Write(zero)
	}
	if err == nil {
		err = fdatasync(f)
	}
	if err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("store: preallocate log segment: %w", err)
	}
	if err := syncDir(l.dir); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, err
	}
	return f, nil
}

// removeSegments deletes folded segments, given in ascending order, the
// oldest first, each deletion durable before the next: a power loss in
// between may leave newer segments but never an older one without the
// newer ones, whose states would otherwise be replayed over newer ones.
func (l *caLog) removeSegments(segs []uint64) error {
	for _, n := range segs {
		if err := os.Remove(l.segPath(n)); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			return fmt.Errorf("store: remove folded log segment: %w", err)
		}
		if err := syncDir(l.dir); err != nil {
			return err
		}
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("store: sync directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("store: sync directory: %w", err)
	}
	return nil
}

// Frame: length of the payload (4 bytes, big-endian), CRC-32C of the
// payload (4 bytes), payload = serial length (2 bytes), serial,
// caEncodeRecord of the record's new state.
func appendFrame(dst []byte, serial string, enc []byte) []byte {
	n := 2 + len(serial) + len(enc)
	start := len(dst)
	dst = binary.BigEndian.AppendUint32(dst, uint32(n))
	dst = append(dst, 0, 0, 0, 0)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(serial)))
	dst = append(dst, serial...)
	dst = append(dst, enc...)
	binary.BigEndian.PutUint32(dst[start+4:], crc32.Checksum(dst[start+8:], crcTable))
	return dst
}

// errTornFrame marks a frame that is cut short or fails its checksum.
var errTornFrame = errors.New("store: torn log frame")

// readFrames calls fn for each frame of a segment in order. It returns
// errTornFrame (wrapped) at the first frame that is incomplete or does not
// match its checksum.
func readFrames(data []byte, fn func(serial string, enc []byte) error) error {
	for off := 0; off < len(data); {
		if len(data)-off < 8 {
			// Fewer bytes than a frame header are left: zeros are the
			// end of what was written (a segment filled to within a
			// header of its size), anything else a cut-short frame.
			if allZero(data[off:]) {
				return nil
			}
			return fmt.Errorf("%w at offset %d", errTornFrame, off)
		}
		n := int(binary.BigEndian.Uint32(data[off:]))
		sum := binary.BigEndian.Uint32(data[off+4:])
		if n == 0 && sum == 0 {
			// The zeros a segment is created with: the end of what was
			// written. Anything but zeros after it is a write that did
			// not complete (or damage).
			if !allZero(data[off:]) {
				return fmt.Errorf("%w: data after the end at offset %d", errTornFrame, off)
			}
			return nil
		}
		if n < 2 || n > len(data)-off-8 {
			return fmt.Errorf("%w at offset %d", errTornFrame, off)
		}
		p := data[off+8 : off+8+n]
		if crc32.Checksum(p, crcTable) != sum {
			return fmt.Errorf("%w at offset %d", errTornFrame, off)
		}
		sl := int(binary.BigEndian.Uint16(p))
		if sl == 0 || 2+sl > len(p) {
			return fmt.Errorf("store: log frame at offset %d is malformed", off)
		}
		if err := fn(string(p[2:2+sl]), p[2+sl:]); err != nil {
			return err
		}
		off += 8 + n
	}
	return nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// replay folds the given segments into bbolt in one commit.
func (l *caLog) replay(segs []uint64) error {
	if len(segs) == 0 {
		return nil
	}
	datas := make([][]byte, len(segs))
	lastUsed := -1
	for i, n := range segs {
		data, err := os.ReadFile(l.segPath(n))
		if err != nil {
			return fmt.Errorf("store: read log segment: %w", err)
		}
		datas[i] = data
		if !allZero(data) {
			lastUsed = i
		}
	}
	states := map[string][]byte{}
	for i, n := range segs {
		data := datas[i]
		err := readFrames(data, func(serial string, enc []byte) error {
			if _, err := caDecodeRecord(serial, enc, false); err != nil {
				return err
			}
			states[serial] = enc
			return nil
		})
		if errors.Is(err, errTornFrame) && i == lastUsed {
			// The tail of the newest segment written to (a fold may have
			// created an empty one after it): a write that crashed before
			// its fdatasync returned, never acknowledged.
			err = nil
		}
		if err != nil {
			return fmt.Errorf("store: log segment %s: %w", l.segPath(n), err)
		}
	}
	err := l.db.Update(func(tx *bolt.Tx) error {
		for serial, enc := range states {
			r, err := caDecodeRecord(serial, enc, false)
			if err != nil {
				return err
			}
			if err := caPutEncoded(tx, r, enc); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: replay the CA record log: %w", err)
	}
	return nil
}

// write logs rec as serial's new state. check, called under the log's
// mutex with serial's current state (ok false if there is none), decides
// whether the write goes ahead and may change rec; the write is queued
// under the same mutex, so writes of one serial are logged in the order
// their checks saw. write returns once the frame is durable.
func (l *caLog) write(serial string, check func(cur ca.Record, ok bool, next *ca.Record) error) (ca.Record, error) {
	l.mu.Lock()
	if err := l.usable(); err != nil {
		l.mu.Unlock()
		return ca.Record{}, err
	}
	cur, ok, err := l.current(serial)
	if err != nil {
		l.mu.Unlock()
		return ca.Record{}, err
	}
	var next ca.Record
	if err := safeCheck(check, cur, ok, &next); err != nil {
		l.mu.Unlock()
		return ca.Record{}, err
	}
	next.Serial = serial
	enc, err := caEncodeRecord(next)
	if err != nil {
		l.mu.Unlock()
		return ca.Record{}, err
	}
	l.pending = appendFrame(l.pending, serial, enc)
	l.queued++
	seq := l.queued
	o := &overlayRec{rec: cloneRecord(next), enc: enc, seq: seq, prev: l.over[serial]}
	if o.prev != nil && o.prev.seq <= l.durable {
		o.prev.prev = nil // nothing older is ever served
	}
	l.over[serial] = o
	if len(l.over) >= caFoldRecords || len(l.over) == 1 {
		select {
		case l.kick <- struct{}{}:
		default:
		}
	}
	err = l.waitDurable(seq)
	l.mu.Unlock()
	return next, err
}

// safeCheck runs a write's check, turning a panic (in a caller's update
// function) into an error so that the log's mutex is not left held.
func safeCheck(check func(ca.Record, bool, *ca.Record) error, cur ca.Record, ok bool, next *ca.Record) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("store: CA record update panicked: %v", p)
		}
	}()
	return check(cur, ok, next)
}

// usable reports why the log takes no writes, if it does not. l.mu held.
func (l *caLog) usable() error {
	switch {
	case l.closed:
		return errLogClosed
	case l.failed != nil:
		return l.failed
	}
	return nil
}

// current returns serial's latest state: the overlay's, else bbolt's.
// l.mu held, so no write of serial can come in between.
func (l *caLog) current(serial string) (ca.Record, bool, error) {
	if o, ok := l.over[serial]; ok {
		return o.rec, true, nil
	}
	var r ca.Record
	found := false
	err := l.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketCACerts).Get([]byte(serial))
		if v == nil {
			return nil
		}
		var err error
		r, err = caDecodeRecord(serial, v, true)
		found = err == nil
		return err
	})
	return r, found, err
}

// lookup returns serial's newest durable state if the overlay holds one.
// A state whose frame is still queued, or whose write failed, is not
// served: a reader (OCSP, `cert show`) must not report what a crash could
// take back. With no durable overlay state, bbolt holds the newest durable
// one.
func (l *caLog) lookup(serial string) (ca.Record, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	o := l.over[serial]
	for o != nil && o.seq > l.durable {
		o = o.prev
	}
	if o == nil {
		return ca.Record{}, false
	}
	return cloneRecord(o.rec), true
}

// cloneRecord copies r's slices, so that the overlay and its callers never
// share them.
func cloneRecord(r ca.Record) ca.Record {
	r.DER = bytes.Clone(r.DER)
	r.Names = slices.Clone(r.Names)
	r.CTFailures = slices.Clone(r.CTFailures)
	return r
}

// waitDurable waits, with l.mu held, until frame seq is durable. When no
// writer is busy it writes and syncs every queued frame itself (its own
// and those queued meanwhile: one fdatasync for all of them), then wakes
// the others.
func (l *caLog) waitDurable(seq uint64) error {
	for l.durable < seq {
		if l.failed != nil {
			return l.failed
		}
		if l.closed {
			return errLogClosed // its frame was never written
		}
		if l.busy {
			l.cond.Wait()
			continue
		}
		l.busy = true
		buf, last, f, off := l.pending, l.queued, l.seg, l.off
		l.pending = nil
		l.off += int64(len(buf))
		l.mu.Unlock()
		_, err := f.WriteAt(buf, off)
		if err == nil {
			err = fdatasync(f)
		}
		l.mu.Lock()
		l.busy = false
		if err != nil {
			l.failed = fmt.Errorf("store: CA record log write failed; the store takes no more CA writes until reopened: %w", err)
		} else {
			l.durable = last
		}
		l.cond.Broadcast()
	}
	return nil
}

// folder folds the overlay into bbolt when kicked, or caFoldDelay after
// the first state arrived, until Close.
func (l *caLog) folder() {
	defer close(l.done)
	for {
		select {
		case <-l.stop:
			return
		case <-l.kick:
		}
		l.mu.Lock()
		n := len(l.over)
		l.mu.Unlock()
		if n < caFoldRecords {
			select {
			case <-l.stop:
				return
			case <-time.After(l.foldDelay):
			}
		}
		err := l.fold()
		l.mu.Lock()
		if err != nil && l.failed == nil && !l.closed {
			l.failed = err
			l.cond.Broadcast()
		}
		if err == nil && len(l.over) > 0 {
			// States written during the fold; the kick they sent may
			// have been taken by this fold already.
			select {
			case l.kick <- struct{}{}:
			default:
			}
		}
		l.mu.Unlock()
	}
}

// fold moves every state in the overlay into bbolt: it starts a new
// segment, waits until every state it takes is durable, commits them to
// bbolt, drops them from the overlay (unless rewritten meanwhile) and
// deletes the segments that held them.
func (l *caLog) fold() error {
	l.folding.Lock()
	defer l.folding.Unlock()
	l.mu.Lock()
	if len(l.over) == 0 {
		l.mu.Unlock()
		return nil
	}
	if err := l.usable(); err != nil {
		l.mu.Unlock()
		return err
	}
	used := l.off
	l.mu.Unlock()
	next, err := l.newSegment(l.segNo+1, 2*used)
	if err != nil {
		return err
	}

	l.mu.Lock()
	// Frames are written by a writer holding no lock; wait until none is,
	// then every frame written so far is in the old segment and every
	// later one goes to the new segment.
	for l.busy && l.failed == nil {
		l.cond.Wait()
	}
	if err := l.usable(); err != nil {
		l.mu.Unlock()
		next.Close()
		os.Remove(next.Name())
		return err
	}
	old, oldNo := l.seg, l.segNo
	l.seg, l.segNo, l.off = next, l.segNo+1, 0
	snap := make(map[string]*overlayRec, len(l.over))
	var maxSeq uint64
	for s, o := range l.over {
		snap[s] = o
		maxSeq = max(maxSeq, o.seq)
	}
	// Only durable states go into bbolt; some frames may still be queued.
	err = l.waitDurable(maxSeq)
	l.mu.Unlock()
	old.Close()
	if err != nil {
		return err
	}
	err = foldHook("commit")
	if err == nil {
		err = l.db.Update(func(tx *bolt.Tx) error {
			for _, o := range snap {
				if err := caPutEncoded(tx, o.rec, o.enc); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err != nil {
		return fmt.Errorf("store: fold the CA record log: %w", err)
	}
	l.mu.Lock()
	for s, o := range snap {
		if l.over[s] == o {
			delete(l.over, s)
		}
	}
	l.mu.Unlock()
	// Segments before the new one hold no state that bbolt lacks now, in
	// the same or a newer version: this commit took every state the
	// overlay held, and older ones were committed by earlier folds. That
	// includes segments an earlier fold left behind when its commit or
	// its removal failed, which must go before any of their states could
	// be replayed over newer ones.
	if err := foldHook("remove"); err != nil {
		return err
	}
	segs, err := l.segments()
	if err != nil {
		return err
	}
	return l.removeSegments(slices.DeleteFunc(segs, func(n uint64) bool { return n > oldNo }))
}

// close folds what is left, stops the folder and removes the log. Only
// the first call does anything.
func (l *caLog) close() error {
	l.closeOnce.Do(func() { l.closeErr = l.doClose() })
	return l.closeErr
}

func (l *caLog) doClose() error {
	close(l.stop)
	<-l.done
	err := l.fold()
	l.mu.Lock()
	for l.busy {
		l.cond.Wait()
	}
	l.closed = true
	l.cond.Broadcast()
	empty := len(l.over) == 0
	f, n := l.seg, l.segNo
	l.mu.Unlock()
	if cerr := f.Close(); err == nil && cerr != nil && !errors.Is(cerr, os.ErrClosed) {
		err = cerr
	}
	if err == nil && empty {
		err = l.removeSegments([]uint64{n})
	}
	return err
}

// caPutRecord writes r and keeps the revoked index in step.
func caPutRecord(tx *bolt.Tx, r ca.Record) error {
	enc, err := caEncodeRecord(r)
	if err != nil {
		return err
	}
	return caPutEncoded(tx, r, enc)
}

// caPutEncoded writes record r, already encoded as enc, and keeps the
// revoked index in step.
func caPutEncoded(tx *bolt.Tx, r ca.Record, enc []byte) error {
	if err := tx.Bucket(bucketCACerts).Put([]byte(r.Serial), enc); err != nil {
		return err
	}
	rb := tx.Bucket(bucketCARevoked)
	key := caRevokedKey(r.Issuer, r.Serial)
	if r.Status != ca.StatusRevoked {
		return rb.Delete(key)
	}
	return rb.Put(key, caRevokedValue(r))
}
