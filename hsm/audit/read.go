package audit

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/hsmca/hsmca/hsm"
	bolt "go.etcd.io/bbolt"
)

// Head syncs what is written and returns the signed head's count and
// hash. A log that refuses appends returns the head as stored.
func (l *Log) Head() (hsm.AuditHead, error) {
	_ = l.Sync()
	ra, closeSeg, err := l.openSegmentForReading()
	if err != nil {
		return hsm.AuditHead{}, err
	}
	defer closeSeg()
	out := hsm.AuditHead{PublicKey: base64.StdEncoding.EncodeToString(l.pub), Hash: hex.EncodeToString(make([]byte, 32))}
	tail := l.openTailHead()
	err = l.db.View(func(tx *bolt.Tx) error {
		h, err := l.readingHead(tx, ra, l.pub, tail)
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

// openTailHead returns the records Open found after the signed head, or
// nil. Readers call it before they open their read transaction, never in
// it: Append holds l.mu across its write transaction, which waits for
// every read transaction when it grows the database file, so taking l.mu
// inside a read transaction deadlocks both.
func (l *Log) openTailHead() *storedHead {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.openTail
}

// readingHead is loadHead for the readers; tail is openTailHead, read
// before tx began. In a process that has not written to the log, the
// records Open found after the signed head (a crash before the flush that
// would have covered them) have no signed head yet: they count as Open
// checked them, each following the one before from the signed head on
// (Verify checks them again). openTail is set only by Open, so reading it
// before the transaction sees the same value as reading it inside.
func (l *Log) readingHead(tx *bolt.Tx, ra io.ReaderAt, pub ed25519.PublicKey, tail *storedHead) (*storedHead, error) {
	h, err := l.loadHead(tx, ra, pub)
	if err != nil {
		return nil, err
	}
	if tail != nil && (h == nil || tail.Count > h.Count) {
		return tail, nil
	}
	return h, nil
}

// segmentEnd is where the segment records covered by head end.
func (l *Log) segmentEnd(head *storedHead) int64 {
	if head == nil || head.Segment < l.hdrLen {
		return l.hdrLen
	}
	return head.Segment
}

// Events syncs what is written and returns the records under the signed
// head with Seq >= from, at most limit (0: all), from both stores in
// order.
func (l *Log) Events(from uint64, limit int) ([]hsm.AuditEvent, error) {
	_ = l.Sync()
	from = max(from, 1)
	ra, closeSeg, err := l.openSegmentForReading()
	if err != nil {
		return nil, err
	}
	defer closeSeg()
	var out []hsm.AuditEvent
	tail := l.openTailHead()
	err = l.db.View(func(tx *bolt.Tx) error {
		head, err := l.readingHead(tx, ra, l.pub, tail)
		if err != nil || head == nil {
			return err
		}
		c := tx.Bucket(recordsBucket).Cursor()
		bk, bv := c.Seek(seqKey(from - 1))
		sr := newSegReader(ra, l.hdrLen, l.segmentEnd(head))
		var rec signRecord
		sok, serr := sr.next(&rec)
		var prev [32]byte
		var seen uint64 // the last record read
		for (limit <= 0 || len(out) < limit) && (bk != nil || sok) {
			useDB := bk != nil && (!sok || binary.BigEndian.Uint64(bk) <= rec.seq)
			var seq uint64
			if useDB {
				seq = binary.BigEndian.Uint64(bk)
			} else {
				seq = rec.seq
			}
			if seq > head.Count {
				return nil
			}
			seen = seq
			if useDB {
				var ev hsm.AuditEvent
				if err := json.Unmarshal(bv, &ev); err != nil {
					return &hsm.AuditError{Seq: seq, Reason: "record unreadable"}
				}
				if seq >= from {
					out = append(out, ev)
				}
				if h, err := hex.DecodeString(ev.Hash); err == nil && len(h) == 32 {
					copy(prev[:], h)
				}
				bk, bv = c.Next()
				continue
			}
			if seq >= from {
				out = append(out, rec.event(prev))
			}
			prev = rec.hash
			sok, serr = sr.next(&rec)
		}
		if serr != nil && (limit <= 0 || len(out) < limit) {
			return segmentError(seen+1, serr)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("audit: read events: %w", err)
	}
	return out, nil
}

// Verify syncs what is written, then checks every record and the signed
// head with the log's own audit key.
func (l *Log) Verify() (hsm.AuditHead, error) { return l.VerifyWithKey(l.pub) }

// VerifyWithKey is Verify against a pinned audit public key (the one an
// auditor recorded at module creation). It reports the first problem as an
// *hsm.AuditError: first a segment that is not this log's, missing or
// replaced (see Open); then a record altered, missing, moved or
// unreadable, a head that does not match or verify, records cut off the
// end, and last a torn segment end left by a crash (see the package doc).
//
// Records cut off the end together with the newest head in the segment's
// head slots, which a torn slot write can also explain, are found only
// against a head kept from before (VerifyExtends).
func (l *Log) VerifyWithKey(pub ed25519.PublicKey) (hsm.AuditHead, error) {
	if len(pub) != ed25519.PublicKeySize {
		return hsm.AuditHead{}, errors.New("audit: pinned public key has the wrong size")
	}
	_ = l.Sync()
	if l.segErr != nil { // set by Open only
		return hsm.AuditHead{}, l.segErr
	}
	ra, closeSeg, err := l.openSegmentForReading()
	if err != nil {
		return hsm.AuditHead{}, err
	}
	defer closeSeg()
	out := hsm.AuditHead{PublicKey: base64.StdEncoding.EncodeToString(pub)}
	tail := l.openTailHead()
	err = l.db.View(func(tx *bolt.Tx) error {
		head, err := l.readingHead(tx, ra, pub, tail)
		if err != nil {
			return err
		}
		prev, n, err := l.verifyChain(tx.Bucket(recordsBucket).Cursor(), newSegReader(ra, l.hdrLen, l.segmentEnd(head)))
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
	// What Open found after the head: a torn end, or records that do not
	// follow the chain.
	l.mu.Lock()
	torn, broken := l.torn, l.broken
	l.mu.Unlock()
	var aerr *hsm.AuditError
	switch {
	case errors.As(broken, &aerr):
		return hsm.AuditHead{}, aerr
	case torn != nil:
		return hsm.AuditHead{}, torn.auditError()
	}
	return out, nil
}

// verifyChain walks the database records and the segment records in
// sequence order, checking each link. It returns the last hash and the
// number of records.
func (l *Log) verifyChain(c *bolt.Cursor, sr *segReader) ([32]byte, uint64, error) {
	var prev [32]byte
	var n uint64
	bk, bv := c.First()
	var rec signRecord
	sok, serr := sr.next(&rec)
	for bk != nil || sok {
		n++
		var bseq uint64
		if bk != nil {
			if len(bk) != 8 {
				return prev, n, &hsm.AuditError{Seq: n, Reason: "malformed record key"}
			}
			bseq = binary.BigEndian.Uint64(bk)
		}
		switch {
		case bk != nil && bseq == n:
			var ev hsm.AuditEvent
			if err := json.Unmarshal(bv, &ev); err != nil {
				return prev, n, &hsm.AuditError{Seq: n, Reason: "record unreadable"}
			}
			if ev.Seq != n {
				return prev, n, &hsm.AuditError{Seq: n, Reason: fmt.Sprintf("record says it is number %d (moved)", ev.Seq)}
			}
			if ev.Prev != hex.EncodeToString(prev[:]) {
				return prev, n, &hsm.AuditError{Seq: n, Reason: "previous-hash link broken"}
			}
			h, err := recordHash(&ev)
			if err != nil {
				return prev, n, &hsm.AuditError{Seq: n, Reason: err.Error()}
			}
			if hex.EncodeToString(h[:]) != ev.Hash {
				return prev, n, &hsm.AuditError{Seq: n, Reason: "record content does not match its hash (altered)"}
			}
			prev = h
			bk, bv = c.Next()
		case sok && rec.seq == n:
			h := signHash(rec.seq, rec.time, rec.partition, rec.key, rec.hashName, rec.digest, &prev)
			if h != rec.hash {
				return prev, n, &hsm.AuditError{Seq: n, Reason: "record content does not match its hash (altered)"}
			}
			prev = h
			sok, serr = sr.next(&rec)
		case serr != nil:
			return prev, n, segmentError(n, serr)
		default:
			next := bseq
			if bk == nil || (sok && rec.seq < next) {
				next = rec.seq
			}
			return prev, n, &hsm.AuditError{Seq: n, Reason: fmt.Sprintf("record missing or moved (next stored record is %d)", next)}
		}
	}
	if serr != nil {
		return prev, n, segmentError(n+1, serr)
	}
	return prev, n, nil
}

func segmentError(seq uint64, err error) error {
	var ferr *frameError
	if !errors.As(err, &ferr) {
		return err
	}
	if ferr.incomplete {
		return &hsm.AuditError{Seq: seq, Reason: fmt.Sprintf("record missing: the audit segment ends inside a record at offset %d (truncated)", ferr.off)}
	}
	return &hsm.AuditError{Seq: seq, Reason: fmt.Sprintf("record unreadable at segment offset %d: %s", ferr.off, ferr.reason)}
}

// ErrNotExtended is wrapped, with the *hsm.AuditError that says where,
// by VerifyExtends when the log does not extend a known head.
var ErrNotExtended = errors.New("audit: the log does not extend a known head")

// VerifyExtends verifies the log as Verify does and also that it extends
// each head recorded earlier (one printed by a previous verify or `hsm
// status`, or quoted in a ceremony transcript): the log holds at least
// known.Count records and record known.Count still has hash known.Hash.
// This catches a log that was rewritten and re-signed with the
// file-resident audit key, and records cut off the end with the newest
// head. If known.PublicKey is set, it must be the log's audit key. When
// the log verifies but does not extend a known head, the error wraps
// ErrNotExtended and an *hsm.AuditError naming the first such head.
func (l *Log) VerifyExtends(known ...hsm.AuditHead) (hsm.AuditHead, error) {
	for _, k := range known {
		if k.PublicKey != "" && k.PublicKey != base64.StdEncoding.EncodeToString(l.pub) {
			return hsm.AuditHead{}, fmt.Errorf("%w: %w", ErrNotExtended, &hsm.AuditError{Seq: 0, Reason: "the audit key is not the one pinned"})
		}
	}
	h, err := l.Verify()
	if err != nil {
		return hsm.AuditHead{}, err
	}
	for _, k := range known {
		if k.Count == 0 {
			continue
		}
		if k.Count > h.Count {
			return hsm.AuditHead{}, fmt.Errorf("%w: %w", ErrNotExtended, &hsm.AuditError{Seq: h.Count + 1, Reason: fmt.Sprintf("record missing: a known head counts %d records, the log holds %d (truncated)", k.Count, h.Count)})
		}
		evs, err := l.Events(k.Count, 1)
		if err != nil {
			return hsm.AuditHead{}, err
		}
		if len(evs) != 1 || evs[0].Hash != k.Hash {
			return hsm.AuditHead{}, fmt.Errorf("%w: %w", ErrNotExtended, &hsm.AuditError{Seq: k.Count, Reason: fmt.Sprintf("record does not match the known head %d:%s (log rewritten)", k.Count, k.Hash)})
		}
	}
	return h, nil
}
