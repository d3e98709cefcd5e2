package audit

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/hsmca/hsmca/hsm"
	bolt "go.etcd.io/bbolt"
)

// What Open reads and checks: the segment file against what the module
// database records about it (its ID, see segment.go), the signed head and
// the records after it; all without writing. prepareLocked creates or
// upgrades the segment before the process's first write.

// segmentMarker is what the database records about the segment, in the
// transaction of the first database record after the segment was created
// (or, for a segment made before segment IDs, after it got one).
type segmentMarker struct {
	ID string `json:"id"` // hex of the ID in the segment's header
}

// openSegment opens the segment, if there is one, and checks it against
// the module database: its header must name this module and, once the
// database records the segment, carry the recorded ID. It creates and
// writes nothing (prepareLocked does, before the first write). It returns
// the file's size, or the size of a header for a segment yet to be
// created.
func (l *Log) openSegment() (int64, error) {
	var marker *segmentMarker
	hadSegment := false
	err := l.db.View(func(tx *bolt.Tx) error {
		if raw := tx.Bucket(headBucket).Get(segmentKey); raw != nil {
			marker = new(segmentMarker)
			if json.Unmarshal(raw, marker) != nil {
				marker.ID = "" // unreadable: matches no segment
			}
		}
		// A head written since segments exist says where its records
		// end in the segment; one written before says nothing (zero).
		h, _ := readHead(tx) // an unreadable head is loadTail's to report
		hadSegment = marker != nil || (h != nil && h.Segment >= segHeaderLen)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("audit: read segment record: %w", err)
	}
	flag := os.O_RDWR
	if l.db.IsReadOnly() {
		// A reader's database (bbolt ReadOnly): the log is never
		// appended to, and the segment may be on read-only media.
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(l.segPath, flag, 0)
	if errors.Is(err, fs.ErrNotExist) {
		if hadSegment {
			l.segmentLost(fmt.Sprintf("the audit segment %s is missing, but the module database records that it exists: the signature records in it are lost (deleted)", filepath.Base(l.segPath)))
			return 0, nil
		}
		l.segFresh = true // a new log, or one from before segments
		return segHeaderLen, nil
	}
	if err != nil {
		return 0, fmt.Errorf("audit: open segment: %w", err)
	}
	l.seg = f
	st, err := f.Stat()
	if err != nil {
		l.closeSegment()
		return 0, fmt.Errorf("audit: open segment: %w", err)
	}
	size := st.Size()
	got := make([]byte, min(size, slotOffset))
	if _, err := f.ReadAt(got, 0); err != nil {
		l.closeSegment()
		return 0, fmt.Errorf("audit: read segment header: %w", err)
	}
	hdr := segHeader(l.ctx)
	switch {
	case size >= segHeaderLen && bytes.HasPrefix(got, hdr):
	case size >= segHeaderLen && bytes.HasPrefix(got, segHeaderMagic(segMagicV2, l.ctx)):
		// v2 differs only in not allocating space ahead of the records.
		l.segStale = true
	case size < segHeaderLen && bytes.HasPrefix(hdr, got[:min(len(got), len(hdr))]):
		if hadSegment {
			l.segmentLost(fmt.Sprintf("the audit segment %s is %d bytes, shorter than its header, but the module database records that it exists: truncated or re-created, the signature records in it are lost", filepath.Base(l.segPath), size))
			return size, nil
		}
		// A crash while it was being created: created anew.
		l.segFresh = true
		return segHeaderLen, nil
	default:
		reason := "the audit segment's header does not name this module (another module's segment, or not a segment)"
		if strings.HasPrefix(string(got), "hsmca audit segment v1\x00") {
			reason = "the audit segment has format v1 (a development build, before the head slots); this build reads v2 and v3 only: recreate the module"
		}
		l.segErr = &hsm.AuditError{Seq: 0, Reason: reason}
		l.broken = l.segErr
		return size, nil
	}
	copy(l.segID[:], got[segIDOffset:])
	switch {
	case marker != nil:
		if hex.EncodeToString(l.segID[:]) != marker.ID {
			l.segmentLost(fmt.Sprintf("the audit segment %s has ID %x, but the module database records segment %s: replaced or re-created, the signature records of the recorded one are lost", filepath.Base(l.segPath), l.segID, marker.ID))
			return size, nil
		}
		l.markerKnown = true
	case l.segID == [segIDLen]byte{}:
		// Made before segment IDs: it gets one, and the database its
		// record, with the next database record.
		l.segStale = true
	}
	return size, nil
}

// segmentLost makes the log refuse appends because its segment is missing
// or not the one the database records, naming the first record the
// database does not hold: where the lost signature records began.
func (l *Log) segmentLost(reason string) {
	seq := uint64(1)
	_ = l.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(recordsBucket).Cursor()
		for k, _ := c.First(); len(k) == 8 && binary.BigEndian.Uint64(k) == seq; k, _ = c.Next() {
			seq++
		}
		return nil
	})
	l.segErr = &hsm.AuditError{Seq: seq, Reason: reason}
	l.broken = l.segErr
}

// segRA reads the segment as Open found it: nothing when it is yet to be
// created.
func (l *Log) segRA() io.ReaderAt {
	if l.seg == nil || l.segFresh {
		return emptyReaderAt{}
	}
	return l.seg
}

func (l *Log) closeSegment() {
	if l.seg != nil {
		l.seg.Close()
	}
}

// prepareLocked readies the segment for writing, once, before this
// process's first write to it: it creates the segment (with a new ID) if
// there is none, or gives an older one the current header and an ID, and
// syncs that before any record depends on it. The next database record
// stores the ID (appendLocked). Called with flushMu and mu held.
func (l *Log) prepareLocked() error {
	if l.w != nil {
		return nil
	}
	hdr := make([]byte, slotOffset)
	copy(hdr, segHeader(l.ctx))
	id := l.segID
	if l.segFresh || id == [segIDLen]byte{} {
		if _, err := io.ReadFull(l.rand, id[:]); err != nil {
			return fmt.Errorf("make segment ID: %w", err)
		}
	}
	copy(hdr[segIDOffset:], id[:])
	switch {
	case l.segFresh:
		f := l.seg
		var err error
		if f == nil {
			f, err = os.OpenFile(l.segPath, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		} else {
			err = f.Truncate(0)
		}
		if err != nil {
			return fmt.Errorf("create segment: %w", err)
		}
		l.seg = f
		full := make([]byte, segHeaderLen) // header and empty head slots
		copy(full, hdr)
		if _, err = f.WriteAt(full, 0); err == nil {
			err = f.Sync()
		}
		if err == nil {
			err = syncDir(filepath.Dir(l.segPath))
		}
		if err != nil {
			return fmt.Errorf("create segment: %w", err)
		}
	case l.segStale:
		_, err := l.seg.WriteAt(hdr, 0)
		if err == nil {
			err = l.seg.Sync()
		}
		if err != nil {
			return fmt.Errorf("upgrade segment header: %w", err)
		}
	}
	st, err := l.seg.Stat()
	if err != nil {
		return err
	}
	l.segID, l.segFresh, l.segStale = id, false, false
	l.w = newSegWriter(l.seg, st.Size())
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// loadTail positions the chain after the last stored record: it checks the
// last record the signed head covers and then reads the segment records
// written after it (see the package doc).
func (l *Log) loadTail(size int64) error {
	if l.broken != nil {
		return nil
	}
	ra := l.segRA()
	l.slotNext = nextSlot(ra)
	var head *storedHead
	err := l.db.View(func(tx *bolt.Tx) error {
		h, herr := l.loadHead(tx, ra, l.pub)
		if herr != nil {
			l.broken = herr
			return nil
		}
		if h == nil {
			return nil
		}
		head = h
		// loadHead checked that the head counts the last database record.
		k, v := tx.Bucket(recordsBucket).Cursor().Last()
		if k == nil || binary.BigEndian.Uint64(k) != h.Count {
			return nil
		}
		var ev hsm.AuditEvent
		if json.Unmarshal(v, &ev) != nil {
			l.broken = &hsm.AuditError{Seq: h.Count, Reason: "last record unreadable"}
			return nil
		}
		hash, err := recordHash(&ev)
		if err != nil || hex.EncodeToString(hash[:]) != ev.Hash || ev.Seq != h.Count || ev.Hash != h.Hash {
			l.broken = &hsm.AuditError{Seq: h.Count, Reason: "last record does not match the signed head"}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("audit: read head: %w", err)
	}
	if l.broken != nil {
		return nil
	}
	start := l.hdrLen
	if head != nil {
		if head.Segment > start {
			start = head.Segment
		}
		prev, err := hex.DecodeString(head.Hash)
		if err != nil || len(prev) != 32 {
			l.broken = &hsm.AuditError{Seq: head.Count, Reason: "signed head hash malformed"}
			return nil
		}
		l.seq, l.headSeq = head.Count, head.Count
		copy(l.prev[:], prev)
		l.lastRec = head.SegmentLast
		if err := l.checkSegmentHead(head, start, size); err != nil {
			l.broken = err
			return nil
		}
	}
	l.off, l.syncedOff = start, start
	return l.readTail(start, size)
}

// checkSegmentHead checks, when the head's last record is in the segment,
// that it is there and has the head's hash.
func (l *Log) checkSegmentHead(head *storedHead, start, size int64) error {
	if size < start {
		return &hsm.AuditError{Seq: head.Count, Reason: fmt.Sprintf("the audit segment is shorter (%d bytes) than the signed head says (%d): truncated", size, start)}
	}
	inDB := false
	err := l.db.View(func(tx *bolt.Tx) error {
		inDB = tx.Bucket(recordsBucket).Get(seqKey(head.Count)) != nil
		return nil
	})
	if err != nil || inDB || head.Count == 0 {
		return err
	}
	if head.SegmentLast < l.hdrLen || head.SegmentLast >= start {
		return &hsm.AuditError{Seq: head.Count, Reason: "last record missing"}
	}
	var rec signRecord
	ok, err := newSegReader(l.segRA(), head.SegmentLast, start).next(&rec)
	if err != nil || !ok || rec.seq != head.Count || hex.EncodeToString(rec.hash[:]) != head.Hash {
		return &hsm.AuditError{Seq: head.Count, Reason: "last record does not match the signed head"}
	}
	return nil
}

// readTail reads the segment records after the head, [start, size): each
// must follow the chain. A frame that cannot be read, or bytes other than
// zeros after the last record, end the tail there (torn).
func (l *Log) readTail(start, size int64) error {
	sr := newSegReader(l.segRA(), start, size)
	sr.zeroEnds = true
	var rec signRecord
	for {
		ok, err := sr.next(&rec)
		var ferr *frameError
		switch {
		case errors.As(err, &ferr):
			l.torn = &tornTail{seq: l.seq + 1, off: sr.off, size: size - sr.off, reason: ferr.reason}
			return nil
		case err != nil:
			return err
		case !ok:
			return l.checkZeros(sr.off, size)
		}
		want := signHash(rec.seq, rec.time, rec.partition, rec.key, rec.hashName, rec.digest, &l.prev)
		if rec.seq != l.seq+1 || want != rec.hash {
			l.broken = &hsm.AuditError{Seq: l.seq + 1, Reason: "record after the signed head does not follow the chain (altered)"}
			return nil
		}
		l.seq, l.prev, l.lastRec = rec.seq, rec.hash, l.off
		l.off = sr.off
	}
}

// checkZeros checks that the segment holds only zeros in [off, size), the
// space allocated after the last record; anything else is a torn end.
func (l *Log) checkZeros(off, size int64) error {
	buf := make([]byte, 64<<10)
	for at := off; at < size; {
		n, err := l.segRA().ReadAt(buf[:min(int64(len(buf)), size-at)], at)
		for _, c := range buf[:n] {
			if c != 0 {
				l.torn = &tornTail{seq: l.seq + 1, off: off, size: size - off, reason: "bytes after the end of the records (a write cut short)"}
				return nil
			}
		}
		if err != nil && n == 0 {
			return fmt.Errorf("audit: read segment: %w", err)
		}
		at += int64(n)
	}
	return nil
}
