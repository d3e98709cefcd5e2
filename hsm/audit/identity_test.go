package audit

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hsmca/hsmca/hsm"
	bolt "go.etcd.io/bbolt"
)

// storedMarker returns the segment ID the database records, or "".
func (e *env) storedMarker(t *testing.T) string {
	t.Helper()
	var m segmentMarker
	err := e.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(headBucket).Get(segmentKey); v != nil {
			return json.Unmarshal(v, &m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m.ID
}

// headerID returns the segment ID in the segment file's header.
func (e *env) headerID(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(e.segPath())
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(data[segIDOffset : segIDOffset+segIDLen])
}

// dirState is the name, size and content of every file beside the
// database but the database itself.
func dirState(t *testing.T, dbPath string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Dir(dbPath))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, ent := range entries {
		if ent.Name() == filepath.Base(dbPath) {
			continue
		}
		data, err := os.ReadFile(filepath.Join(filepath.Dir(dbPath), ent.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[ent.Name()] = string(data)
	}
	return out
}

// readAll runs what `hsm audit verify`, `list` and `status` run on a log.
func readAll(l *Log) {
	l.Head()
	l.Events(1, 0)
	l.Verify()
	l.Close()
}

// The database records the segment's ID with its first record, so a
// segment that is deleted, re-created or replaced is tampering, reported
// by Verify and refused for appends; it is never created anew in its
// place.
func TestSegmentLossDetected(t *testing.T) {
	tests := []struct {
		name   string
		tamper func(t *testing.T, e *env)
		reason string
	}{
		{"deleted", func(t *testing.T, e *env) {
			if err := os.Remove(e.segPath()); err != nil {
				t.Fatal(err)
			}
		}, "missing"},
		{"re-created empty", func(t *testing.T, e *env) {
			if err := os.WriteFile(e.segPath(), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "shorter than its header"},
		{"cut inside the header", func(t *testing.T, e *env) {
			if err := os.Truncate(e.segPath(), 100); err != nil {
				t.Fatal(err)
			}
		}, "shorter than its header"},
		{"replaced by a new segment of the same module", func(t *testing.T, e *env) {
			other := newEnvOpts(t, e.opts)
			if _, err := other.log.Append("init", "", nil); err != nil {
				t.Fatal(err)
			}
			other.close()
			data, err := os.ReadFile(other.segPath())
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(e.segPath(), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "replaced"},
		{"ID cleared", func(t *testing.T, e *env) {
			data, err := os.ReadFile(e.segPath())
			if err != nil {
				t.Fatal(err)
			}
			clear(data[segIDOffset : segIDOffset+segIDLen])
			if err := os.WriteFile(e.segPath(), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "replaced"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnvOpts(t, Options{FlushInterval: time.Millisecond})
			if _, err := e.log.Append("init", "", nil); err != nil {
				t.Fatal(err)
			}
			for i := range 20 {
				e.sign(t, i)
			}
			if err := e.log.Sync(); err != nil {
				t.Fatal(err)
			}
			e.crash(t)
			tc.tamper(t, e)
			before := dirState(t, e.path)
			e2 := e.reopen(t)
			var aerr *hsm.AuditError
			if _, err := e2.log.Verify(); !errors.As(err, &aerr) || aerr.Seq != 2 || !strings.Contains(aerr.Reason, tc.reason) {
				t.Fatalf("Verify = %v, want record 2 and %q", err, tc.reason)
			}
			if _, err := e2.log.VerifyWithKey(e.key.Public().(ed25519.PublicKey)); err == nil {
				t.Fatal("VerifyWithKey passed")
			}
			if _, err := e2.log.Append("seal", "", nil); !errors.As(err, &aerr) {
				t.Fatalf("append on a log whose segment is lost: %v", err)
			}
			if _, err := e2.log.BeginSign("issuing", "k1", "SHA-256", digestOf(1)); !errors.As(err, &aerr) {
				t.Fatalf("signature on a log whose segment is lost: %v", err)
			}
			readAll(e2.log)
			if after := dirState(t, e.path); !maps.Equal(before, after) {
				t.Fatalf("opening, reading and appending changed the module's files: %d files before, %d after", len(before), len(after))
			}
		})
	}
}

// Open and the readers create and change no file, even after a crash
// left records after the head and space allocated ahead of them; the
// readers still count those records.
func TestReadingChangesNothing(t *testing.T) {
	t.Run("after a crash", func(t *testing.T) {
		e := newEnvOpts(t, Options{FlushInterval: time.Hour})
		e.appendMixed(t, 4)
		for i := range 5 {
			e.sign(t, 100+i) // records 5 to 9, after the head
		}
		e.crash(t)
		before := dirState(t, e.path)
		e2 := e.reopen(t)
		if h, err := e2.log.Head(); err != nil || h.Count != 9 {
			t.Fatalf("head %+v, %v", h, err)
		}
		if evs, err := e2.log.Events(1, 0); err != nil || len(evs) != 9 {
			t.Fatalf("events: %d, %v", len(evs), err)
		}
		if h, err := e2.log.Verify(); err != nil || h.Count != 9 {
			t.Fatalf("verify %+v, %v", h, err)
		}
		e2.close()
		if after := dirState(t, e.path); !maps.Equal(before, after) {
			t.Fatal("reading the log changed the segment")
		}
		// A process that writes covers them.
		e3 := e2.reopen(t)
		e3.sign(t, 200)
		if err := e3.log.Sync(); err != nil {
			t.Fatal(err)
		}
		if h, err := e3.log.Verify(); err != nil || h.Count != 10 {
			t.Fatalf("verify after a signature: %+v, %v", h, err)
		}
	})
	t.Run("new log", func(t *testing.T) {
		e := newEnvOpts(t, Options{})
		readAll(e.log)
		if _, err := os.Stat(e.segPath()); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("a log that was only read has a segment: %v", err)
		}
	})
}

// A new log's first append creates the segment with a random ID; the
// first database record stores it. Many first signers at once create one
// segment.
func TestSegmentCreatedByFirstAppend(t *testing.T) {
	t.Run("database record first", func(t *testing.T) {
		e := newEnvOpts(t, Options{})
		if _, err := e.log.Append("init", "", nil); err != nil {
			t.Fatal(err)
		}
		id := e.headerID(t)
		if id == strings.Repeat("0", 2*segIDLen) || e.storedMarker(t) != id {
			t.Fatalf("segment ID %s, database records %q", id, e.storedMarker(t))
		}
	})
	t.Run("signatures first", func(t *testing.T) {
		e := newEnvOpts(t, Options{})
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tk, err := e.log.BeginSign("issuing", "k1", "SHA-256", digestOf(i))
				if err == nil {
					err = e.log.Wait(tk)
				}
				if err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		if e.storedMarker(t) != "" {
			t.Fatal("segment ID recorded without a database record")
		}
		if _, err := e.log.Append("seal", "", nil); err != nil {
			t.Fatal(err)
		}
		if id := e.headerID(t); e.storedMarker(t) != id {
			t.Fatalf("segment ID %s, database records %q", id, e.storedMarker(t))
		}
		if h, err := e.log.Verify(); err != nil || h.Count != 9 {
			t.Fatalf("verify %+v, %v", h, err)
		}
	})
	t.Run("crash while creating it", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, SegmentFile), []byte(segMagic[:10]), 0o600); err != nil {
			t.Fatal(err)
		}
		e := openEnv(t, filepath.Join(dir, "module.db"), newKey(t), Options{})
		if _, err := e.log.Append("init", "", nil); err != nil {
			t.Fatal(err)
		}
		e.sign(t, 1)
		if h, err := e.log.Verify(); err != nil || h.Count != 2 {
			t.Fatalf("verify %+v, %v", h, err)
		}
	})
}

// A log from before segment IDs has no record of its segment: it opens as
// before, and the next database record gives the segment an ID and stores
// it, after which losing the segment is found.
func TestSegmentIDUpgrade(t *testing.T) {
	t.Run("segment without an ID", func(t *testing.T) {
		e := newEnv(t, 6)
		e.close()
		data, err := os.ReadFile(e.segPath())
		if err != nil {
			t.Fatal(err)
		}
		clear(data[segIDOffset : segIDOffset+segIDLen])
		if err := os.WriteFile(e.segPath(), data, 0o600); err != nil {
			t.Fatal(err)
		}
		e.forgetSegment(t, false)

		e2 := e.reopen(t)
		if h, err := e2.log.Verify(); err != nil || h.Count != 6 {
			t.Fatalf("verify of a log from before segment IDs: %+v, %v", h, err)
		}
		if e2.headerID(t) != strings.Repeat("0", 2*segIDLen) {
			t.Fatal("reading the log gave the segment an ID")
		}
		if _, err := e2.log.Append("activate", "issuing", nil); err != nil {
			t.Fatal(err)
		}
		id := e2.headerID(t)
		if id == strings.Repeat("0", 2*segIDLen) || e2.storedMarker(t) != id {
			t.Fatalf("after the next record: segment ID %s, database records %q", id, e2.storedMarker(t))
		}
		if h, err := e2.log.Verify(); err != nil || h.Count != 7 {
			t.Fatalf("verify after the upgrade: %+v, %v", h, err)
		}
		e2.close()
		if err := os.Remove(e.segPath()); err != nil {
			t.Fatal(err)
		}
		if _, err := e2.reopen(t).log.Verify(); err == nil || !strings.Contains(err.Error(), "missing") {
			t.Fatalf("upgraded log without its segment: %v", err)
		}
	})
	t.Run("database only, from before segments", func(t *testing.T) {
		e := newEnvOpts(t, Options{})
		for range 3 {
			if _, err := e.log.Append("share-accepted", "issuing", nil); err != nil {
				t.Fatal(err)
			}
		}
		e.close()
		if err := os.Remove(e.segPath()); err != nil {
			t.Fatal(err)
		}
		e.forgetSegment(t, true)

		e2 := e.reopen(t)
		if h, err := e2.log.Verify(); err != nil || h.Count != 3 {
			t.Fatalf("verify of a log from before segments: %+v, %v", h, err)
		}
		if _, err := os.Stat(e.segPath()); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("reading the log created a segment: %v", err)
		}
		e2.sign(t, 1)
		if _, err := e2.log.Append("seal", "issuing", nil); err != nil {
			t.Fatal(err)
		}
		if h, err := e2.log.Verify(); err != nil || h.Count != 5 || e2.storedMarker(t) != e2.headerID(t) {
			t.Fatalf("verify after the first signature: %+v, %v", h, err)
		}
	})
}

// forgetSegment makes the closed log's database look like one written
// before segment IDs: no record of the segment, and with noSegment, heads
// that say nothing about a segment either (before segments).
func (e *env) forgetSegment(t *testing.T, noSegment bool) {
	t.Helper()
	db, err := bolt.Open(e.path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(headBucket)
		if err := b.Delete(segmentKey); err != nil || !noSegment {
			return err
		}
		var h storedHead
		if err := json.Unmarshal(b.Get(headKey), &h); err != nil {
			return err
		}
		h.Segment, h.SegmentLast = 0, 0 // not signed: hints only
		v, err := json.Marshal(h)
		if err != nil {
			return err
		}
		return b.Put(headKey, v)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Every database record is committed with a database head that counts
// it: records cut off the end with that head are found even when an older
// head in a segment slot covers what is left.
func TestDatabaseHeadRequired(t *testing.T) {
	tests := []struct {
		name    string
		tamper  func(b, heads *bolt.Bucket) error
		wantSeq uint64
	}{
		{"last record and head removed", func(b, heads *bolt.Bucket) error {
			if err := b.Delete(seqKey(5)); err != nil {
				return err
			}
			return heads.Delete(headKey)
		}, 2},
		{"head removed", func(b, heads *bolt.Bucket) error { return heads.Delete(headKey) }, 6},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnvOpts(t, Options{})
			if _, err := e.log.Append("init", "", nil); err != nil {
				t.Fatal(err)
			}
			for i := range 3 {
				e.sign(t, i)
			}
			if err := e.log.Sync(); err != nil { // a slot head counts 4
				t.Fatal(err)
			}
			if _, err := e.log.Append("export", "issuing", map[string]string{"key": "k1", "to": "elsewhere"}); err != nil {
				t.Fatal(err)
			}
			e.log.Close()
			err := e.db.Update(func(tx *bolt.Tx) error { return tc.tamper(tx.Bucket(recordsBucket), tx.Bucket(headBucket)) })
			if err != nil {
				t.Fatal(err)
			}
			e.db.Close()
			e2 := e.reopen(t)
			var aerr *hsm.AuditError
			if h, err := e2.log.Verify(); !errors.As(err, &aerr) || aerr.Seq != tc.wantSeq || !strings.Contains(aerr.Reason, "signed head") {
				t.Fatalf("Verify = %+v, %v; want record %d", h, err, tc.wantSeq)
			}
			if _, err := e2.log.Append("seal", "", nil); err == nil {
				t.Fatal("append accepted")
			}
		})
	}
}

// Records cut off the end together with the newest head slot (zeroed, as
// a torn slot write could leave it) are not found by Verify, which cannot
// tell that from a crash; a head an auditor kept finds them.
func TestKnownHeadFindsCutSlotHead(t *testing.T) {
	e := newEnvOpts(t, Options{FlushInterval: time.Hour})
	if _, err := e.log.Append("init", "", nil); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		e.sign(t, i)
	}
	if err := e.log.Sync(); err != nil { // a slot head counts 6
		t.Fatal(err)
	}
	for i := range 5 {
		e.sign(t, 10+i)
	}
	if err := e.log.Sync(); err != nil { // the other slot counts 11
		t.Fatal(err)
	}
	known, err := e.log.Head()
	if err != nil || known.Count != 11 {
		t.Fatalf("head %+v, %v", known, err)
	}
	e.crash(t)
	data, err := os.ReadFile(e.segPath())
	if err != nil {
		t.Fatal(err)
	}
	s := readSlots(bytes.NewReader(data))
	newest, older := 0, 1
	if s[1].Count > s[0].Count {
		newest, older = 1, 0
	}
	clear(data[slotOffset+newest*slotLen : slotOffset+(newest+1)*slotLen])
	clear(data[s[older].Segment:])
	if err := os.WriteFile(e.segPath(), data, 0o600); err != nil {
		t.Fatal(err)
	}
	e2 := e.reopen(t)
	h, err := e2.log.Verify()
	t.Logf("Verify without a known head: %+v, %v", h, err)
	var aerr *hsm.AuditError
	if _, err := e2.log.VerifyExtends(known); !errors.As(err, &aerr) || !strings.Contains(aerr.Reason, "truncated") {
		t.Fatalf("VerifyExtends(%d records) = %v, want truncated", known.Count, err)
	}
}

// VerifyExtends checks several known heads in one pass and names the one
// the log does not extend.
func TestVerifyExtendsSeveral(t *testing.T) {
	e := newEnv(t, 4)
	first, err := e.log.Head()
	if err != nil {
		t.Fatal(err)
	}
	e.appendMixed(t, 4)
	second, err := e.log.Head()
	if err != nil {
		t.Fatal(err)
	}
	if h, err := e.log.VerifyExtends(first, second); err != nil || h != second {
		t.Fatalf("VerifyExtends = %+v, %v", h, err)
	}
	forged := second
	forged.Count = 6
	var aerr *hsm.AuditError
	if _, err := e.log.VerifyExtends(first, forged); !errors.As(err, &aerr) || aerr.Seq != 6 || !strings.Contains(aerr.Reason, "6:"+second.Hash) {
		t.Fatalf("VerifyExtends with a head the log does not hold: %v", err)
	}
}
