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
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hsmca/hsmca/hsm"
	bolt "go.etcd.io/bbolt"
)

type env struct {
	path string
	db   *bolt.DB
	key  ed25519.PrivateKey
	opts Options
	log  *Log
}

func openEnv(t testing.TB, path string, key ed25519.PrivateKey, opts Options) *env {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if opts.Context == "" {
		opts.Context = "module-1"
	}
	l, err := Open(db, key, opts)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{path: path, db: db, key: key, opts: opts, log: l}
	t.Cleanup(e.close)
	return e
}

func (e *env) close() {
	e.log.Close()
	e.db.Close()
}

// crash stops the log as a kill -9 would: no final sync, no head for the
// records written since the last flush.
func (e *env) crash(t testing.TB) {
	t.Helper()
	l := e.log
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	close(l.stop)
	<-l.done
	if l.w != nil {
		l.w.close()
	}
	if l.seg != nil {
		l.seg.Close()
	}
	e.db.Close()
}

// reopen opens the same files again with the same options.
func (e *env) reopen(t testing.TB) *env {
	t.Helper()
	return openEnv(t, e.path, e.key, e.opts)
}

func (e *env) segPath() string { return filepath.Join(filepath.Dir(e.path), SegmentFile) }

func newKey(t testing.TB) ed25519.PrivateKey {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func newEnvOpts(t testing.TB, opts Options) *env {
	t.Helper()
	return openEnv(t, filepath.Join(t.TempDir(), "module.db"), newKey(t), opts)
}

func newEnv(t testing.TB, records int) *env {
	t.Helper()
	e := newEnvOpts(t, Options{})
	e.appendMixed(t, records)
	return e
}

func digestOf(i int) []byte {
	d := sha256.Sum256([]byte(fmt.Sprint(i)))
	return d[:]
}

// appendMixed appends n records: every third one a database event, the
// others signature records, so the chain runs through both stores.
func (e *env) appendMixed(t testing.TB, n int) {
	t.Helper()
	for i := range n {
		if i%3 == 0 {
			if _, err := e.log.Append("share-accepted", "issuing", map[string]string{"index": fmt.Sprint(i)}); err != nil {
				t.Fatal(err)
			}
			continue
		}
		e.sign(t, i)
	}
}

func (e *env) sign(t testing.TB, i int) Ticket {
	t.Helper()
	tk, err := e.log.BeginSign("issuing", "k1", "SHA-256", digestOf(i))
	if err == nil {
		err = e.log.Wait(tk)
	}
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

// edit changes the stored database records directly, as an attacker with
// the file would.
func (e *env) edit(t *testing.T, f func(b *bolt.Bucket)) {
	t.Helper()
	err := e.db.Update(func(tx *bolt.Tx) error { f(tx.Bucket(recordsBucket)); return nil })
	if err != nil {
		t.Fatal(err)
	}
}

// frames returns the offsets and lengths of the segment's frames, up to
// the zeros of the space allocated after them.
func frames(t testing.TB, data []byte, hdrLen int) (offs, lens []int) {
	t.Helper()
	for off := hdrLen; off < len(data); {
		if len(data)-off < frameHeaderLen {
			t.Fatalf("partial frame header at %d", off)
		}
		if [frameHeaderLen]byte(data[off:off+frameHeaderLen]) == [frameHeaderLen]byte{} {
			break
		}
		n := frameHeaderLen + int(binary.BigEndian.Uint32(data[off:]))
		offs, lens = append(offs, off), append(lens, n)
		off += n
	}
	return offs, lens
}

// editSegment rewrites the segment file with f(data, frame offsets, frame
// lengths).
func (e *env) editSegment(t *testing.T, f func(data []byte, offs, lens []int) []byte) {
	t.Helper()
	data, err := os.ReadFile(e.segPath())
	if err != nil {
		t.Fatal(err)
	}
	offs, lens := frames(t, data, int(e.log.hdrLen))
	if err := os.WriteFile(e.segPath(), f(data, offs, lens), 0o600); err != nil {
		t.Fatal(err)
	}
}

// fixCRC recomputes the CRC of the frame at off, so that only the hash
// chain can tell the change.
func fixCRC(data []byte, off int) {
	n := int(binary.BigEndian.Uint32(data[off:]))
	body := data[off+frameHeaderLen : off+frameHeaderLen+n]
	binary.BigEndian.PutUint32(data[off+4:], crc32.Checksum(body, castagnoli))
}

func TestAppendVerify(t *testing.T) {
	e := newEnv(t, 10)
	h, err := e.log.Verify()
	if err != nil {
		t.Fatal(err)
	}
	head, err := e.log.Head()
	if err != nil {
		t.Fatal(err)
	}
	if h.Count != 10 || h != head {
		t.Fatalf("verify %+v, head %+v", h, head)
	}
	all, err := e.log.Events(1, 0)
	if err != nil || len(all) != 10 {
		t.Fatalf("events: %d, %v", len(all), err)
	}
	for i, ev := range all {
		if ev.Seq != uint64(i+1) || (i > 0 && ev.Prev != all[i-1].Hash) {
			t.Fatalf("event %d: %+v", i, ev)
		}
		// Every record, whatever its store, has the hash recordHash gives.
		if got, err := recordHash(&ev); err != nil || hex.EncodeToString(got[:]) != ev.Hash {
			t.Fatalf("event %d hash: %v", ev.Seq, err)
		}
		wantType := "sign"
		if i%3 == 0 {
			wantType = "share-accepted"
		}
		if ev.Type != wantType {
			t.Fatalf("event %d type %q, want %q", ev.Seq, ev.Type, wantType)
		}
		if ev.Type == "sign" && (ev.Fields["key"] != "k1" || ev.Fields["hash"] != "SHA-256" || ev.Fields["digest"] != hex.EncodeToString(digestOf(i))) {
			t.Fatalf("sign event %d fields %v", ev.Seq, ev.Fields)
		}
	}
	evs, err := e.log.Events(4, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 3 || evs[0].Seq != 4 || evs[2].Seq != 6 || evs[1].Prev != evs[0].Hash || evs[0].Prev != all[2].Hash {
		t.Fatalf("events: %+v", evs)
	}
	// The signature records are in the segment, the rest in the database.
	var inDB int
	e.db.View(func(tx *bolt.Tx) error { inDB = tx.Bucket(recordsBucket).Stats().KeyN; return nil })
	if inDB != 4 {
		t.Fatalf("%d records in the database, want 4", inDB)
	}
}

func TestVerifyDetectsTampering(t *testing.T) {
	// newEnv(t, 10): records 1, 4, 7, 10 are in the database; 2, 3, 5, 6,
	// 8, 9 are segment frames 0..5.
	tests := []struct {
		name    string
		tamper  func(t *testing.T, e *env)
		wantSeq uint64
		reason  string
		// tailBroken: a reopened log refuses appends (the last record no
		// longer matches the signed head).
		tailBroken bool
	}{
		{name: "field changed", tamper: func(t *testing.T, e *env) {
			e.edit(t, func(b *bolt.Bucket) {
				var ev hsm.AuditEvent
				json.Unmarshal(b.Get(seqKey(4)), &ev)
				ev.Fields["index"] = "9"
				v, _ := json.Marshal(ev)
				b.Put(seqKey(4), v)
			})
		}, wantSeq: 4, reason: "altered"},
		{name: "time changed", tamper: func(t *testing.T, e *env) {
			e.edit(t, func(b *bolt.Bucket) {
				var ev hsm.AuditEvent
				json.Unmarshal(b.Get(seqKey(7)), &ev)
				ev.Time = ev.Time.Add(time.Nanosecond)
				v, _ := json.Marshal(ev)
				b.Put(seqKey(7), v)
			})
		}, wantSeq: 7, reason: "altered"},
		{name: "record deleted", tamper: func(t *testing.T, e *env) {
			e.edit(t, func(b *bolt.Bucket) { b.Delete(seqKey(4)) })
		}, wantSeq: 4, reason: "missing"},
		{name: "records swapped", tamper: func(t *testing.T, e *env) {
			e.edit(t, func(b *bolt.Bucket) {
				a, c := append([]byte(nil), b.Get(seqKey(4))...), append([]byte(nil), b.Get(seqKey(7))...)
				b.Put(seqKey(4), c)
				b.Put(seqKey(7), a)
			})
		}, wantSeq: 4, reason: "moved"},
		{name: "truncated", tamper: func(t *testing.T, e *env) {
			e.edit(t, func(b *bolt.Bucket) { b.Delete(seqKey(10)) })
		}, wantSeq: 10, reason: "truncated", tailBroken: true},
		{name: "signature digest changed", tamper: func(t *testing.T, e *env) {
			e.editSegment(t, func(d []byte, offs, lens []int) []byte {
				d[offs[2]+lens[2]-1] ^= 1 // last digest byte of record 5
				fixCRC(d, offs[2])
				return d
			})
		}, wantSeq: 5, reason: "altered"},
		{name: "signature key changed", tamper: func(t *testing.T, e *env) {
			e.editSegment(t, func(d []byte, offs, lens []int) []byte {
				i := strings.Index(string(d[offs[3]:]), "k1")
				d[offs[3]+i+1] = '2'
				fixCRC(d, offs[3])
				return d
			})
		}, wantSeq: 6, reason: "altered"},
		{name: "signature record damaged", tamper: func(t *testing.T, e *env) {
			e.editSegment(t, func(d []byte, offs, lens []int) []byte {
				d[offs[1]+20] ^= 0x80
				return d
			})
		}, wantSeq: 3, reason: "unreadable"},
		{name: "signature record deleted", tamper: func(t *testing.T, e *env) {
			e.editSegment(t, func(d []byte, offs, lens []int) []byte {
				return append(d[:offs[2]:offs[2]], d[offs[3]:]...)
			})
		}, wantSeq: 5, reason: "missing"},
		{name: "signature records swapped", tamper: func(t *testing.T, e *env) {
			e.editSegment(t, func(d []byte, offs, lens []int) []byte {
				out := append([]byte(nil), d[:offs[2]]...)
				out = append(out, d[offs[3]:offs[3]+lens[3]]...)
				out = append(out, d[offs[2]:offs[2]+lens[2]]...)
				return append(out, d[offs[4]:]...)
			})
		}, wantSeq: 5, reason: "moved"},
		{name: "segment truncated", tamper: func(t *testing.T, e *env) {
			e.editSegment(t, func(d []byte, offs, lens []int) []byte { return d[:offs[4]] })
		}, wantSeq: 8, reason: "truncated", tailBroken: true},
		{name: "segment cut inside a record", tamper: func(t *testing.T, e *env) {
			e.editSegment(t, func(d []byte, offs, lens []int) []byte { return d[:offs[5]+10] })
		}, wantSeq: 9, reason: "truncated", tailBroken: true},
		{name: "head re-signed with another key", tamper: func(t *testing.T, e *env) {
			other := newKey(t)
			l2 := &Log{key: other, ctx: "module-1"}
			e.edit(t, func(b *bolt.Bucket) { b.Delete(seqKey(10)) })
			err := e.db.Update(func(tx *bolt.Tx) error {
				var h storedHead
				json.Unmarshal(tx.Bucket(headBucket).Get(headKey), &h)
				sh := l2.signHead(9, [32]byte{}, h.Segment, h.SegmentLast)
				v, _ := json.Marshal(sh)
				return tx.Bucket(headBucket).Put(headKey, v)
			})
			if err != nil {
				t.Fatal(err)
			}
		}, wantSeq: 9, reason: "signature", tailBroken: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, 10)
			tc.tamper(t, e)
			check := func(l *Log) {
				t.Helper()
				_, err := l.Verify()
				var aerr *hsm.AuditError
				if !errors.As(err, &aerr) {
					t.Fatalf("Verify = %v, want *hsm.AuditError", err)
				}
				if aerr.Seq != tc.wantSeq || !strings.Contains(aerr.Reason, tc.reason) {
					t.Fatalf("got %v, want record %d, reason containing %q", aerr, tc.wantSeq, tc.reason)
				}
			}
			check(e.log)
			e.close()
			e2 := e.reopen(t)
			check(e2.log)
			_, aerr := e2.log.Append("seal", "issuing", nil)
			_, serr := e2.log.BeginSign("issuing", "k1", "SHA-256", digestOf(1))
			if tc.tailBroken && (aerr == nil || serr == nil) {
				t.Fatalf("append (%v) or signature (%v) accepted on a log whose tail does not match its signed head", aerr, serr)
			}
		})
	}
}

func TestReopenContinuesChain(t *testing.T) {
	e := newEnv(t, 5)
	e.close()
	e2 := e.reopen(t)
	tk := e2.sign(t, 99)
	if tk.Seq() != 6 {
		t.Fatalf("seq after reopen = %d, want 6", tk.Seq())
	}
	ev, err := e2.log.Append("seal", "root", map[string]string{"reason": "test"})
	if err != nil {
		t.Fatal(err)
	}
	if ev.Seq != 7 {
		t.Fatalf("seq = %d, want 7", ev.Seq)
	}
	if h, err := e2.log.Verify(); err != nil || h.Count != 7 || h.Hash != ev.Hash {
		t.Fatalf("verify after reopen: %+v, %v", h, err)
	}
}

// A crash after records were written but before a flush covered them:
// the complete records are found, checked and covered on reopen.
func TestCrashBeforeFlushKeepsWrittenRecords(t *testing.T) {
	e := newEnvOpts(t, Options{FlushInterval: time.Hour})
	e.appendMixed(t, 4) // ends with a database record (head 4)
	for i := range 5 {
		e.sign(t, 100+i) // written, not flushed: the interval is an hour
	}
	var stored storedHead
	e.db.View(func(tx *bolt.Tx) error { return json.Unmarshal(tx.Bucket(headBucket).Get(headKey), &stored) })
	if stored.Count != 4 {
		t.Fatalf("head before the crash counts %d, want 4 (the flusher ran early?)", stored.Count)
	}
	e.crash(t)
	e2 := e.reopen(t)
	h, err := e2.log.Verify()
	if err != nil || h.Count != 9 {
		t.Fatalf("verify after crash: %+v, %v", h, err)
	}
	evs, err := e2.log.Events(5, 0)
	if err != nil || len(evs) != 5 || evs[4].Fields["digest"] != hex.EncodeToString(digestOf(104)) {
		t.Fatalf("events after crash: %+v, %v", evs, err)
	}
	if tk := e2.sign(t, 200); tk.Seq() != 10 {
		t.Fatalf("next seq %d, want 10", tk.Seq())
	}
}

// A power loss during a write leaves a torn frame at the end of the
// segment. Verify names it; the next append records an audit-recover event
// and cuts it off; then the log verifies again.
func TestTornTail(t *testing.T) {
	tests := []struct {
		name  string
		tear  func(data []byte, offs, lens []int) []byte
		after uint64 // complete records left
	}{
		{"cut inside the last record", func(d []byte, offs, lens []int) []byte { return d[:offs[len(offs)-1]+lens[len(lens)-1]/2] }, 6},
		{"cut inside the last frame header", func(d []byte, offs, lens []int) []byte { return d[:offs[len(offs)-1]+3] }, 6},
		{"bytes after the zeros that end the records", func(d []byte, offs, lens []int) []byte { return append(d, 1, 2, 3) }, 7},
		{"a later page kept, an earlier one lost", func(d []byte, offs, lens []int) []byte {
			last := offs[len(offs)-1]
			moved := append([]byte(nil), d[last:last+lens[len(lens)-1]]...)
			clear(d[last:])
			return append(d[:last+8192], moved...)
		}, 6},
		{"last record garbled", func(d []byte, offs, lens []int) []byte {
			last := offs[len(offs)-1]
			for i := last + frameHeaderLen + 20; i < len(d); i++ {
				d[i] = 0
			}
			return d
		}, 6},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnvOpts(t, Options{FlushInterval: time.Hour})
			e.appendMixed(t, 4)
			for i := range 3 {
				e.sign(t, 100+i) // records 5, 6, 7: unsynced
			}
			e.crash(t)
			e.editSegment(t, tc.tear)
			e2 := e.reopen(t)
			_, err := e2.log.Verify()
			var aerr *hsm.AuditError
			if !errors.As(err, &aerr) || aerr.Seq != tc.after+1 || !strings.Contains(aerr.Reason, "torn") {
				t.Fatalf("verify of a torn segment: %v, want torn record %d", err, tc.after+1)
			}
			// Reported again after another reopen: nothing was cut yet.
			e2.close()
			e3 := e2.reopen(t)
			if _, err := e3.log.Verify(); !errors.As(err, &aerr) || aerr.Seq != tc.after+1 {
				t.Fatalf("verify after a second reopen: %v", err)
			}
			// The next signature recovers first.
			tk := e3.sign(t, 300)
			if tk.Seq() != tc.after+2 {
				t.Fatalf("signature after recovery has seq %d, want %d", tk.Seq(), tc.after+2)
			}
			h, err := e3.log.Verify()
			if err != nil || h.Count != tc.after+2 {
				t.Fatalf("verify after recovery: %+v, %v", h, err)
			}
			evs, err := e3.log.Events(tc.after+1, 0)
			if err != nil || len(evs) != 2 || evs[0].Type != "audit-recover" || evs[0].Fields["torn_seq"] != fmt.Sprint(tc.after+1) || evs[1].Type != "sign" {
				t.Fatalf("events after recovery: %+v, %v", evs, err)
			}
			e3.close()
			if h, err := e3.reopen(t).log.Verify(); err != nil || h.Count != tc.after+2 {
				t.Fatalf("verify after recovery and reopen: %+v, %v", h, err)
			}
		})
	}
}

// Records after the head that are complete but do not follow the chain
// are not a crash: the log refuses appends.
func TestAlteredTailRefuses(t *testing.T) {
	e := newEnvOpts(t, Options{FlushInterval: time.Hour})
	e.appendMixed(t, 4)
	for i := range 3 {
		e.sign(t, 100+i)
	}
	e.crash(t)
	e.editSegment(t, func(d []byte, offs, lens []int) []byte {
		d[offs[len(offs)-2]+lens[len(lens)-2]-1] ^= 1
		fixCRC(d, offs[len(offs)-2])
		return d
	})
	e2 := e.reopen(t)
	var aerr *hsm.AuditError
	if _, err := e2.log.Verify(); !errors.As(err, &aerr) || aerr.Seq != 6 || !strings.Contains(aerr.Reason, "altered") {
		t.Fatalf("verify: %v", err)
	}
	if _, err := e2.log.BeginSign("issuing", "k1", "SHA-256", digestOf(1)); !errors.As(err, &aerr) {
		t.Fatalf("signature on an altered log: %v", err)
	}
	if err := e2.log.Recover(); err != nil {
		t.Fatalf("recover with nothing torn: %v", err)
	}
	if _, err := e2.log.Append("seal", "", nil); err == nil {
		t.Fatal("append accepted on an altered log")
	}
}

func TestOtherContextOrKeyFails(t *testing.T) {
	e := newEnv(t, 5)
	if _, err := e.log.VerifyWithKey(newKey(t).Public().(ed25519.PublicKey)); err == nil {
		t.Fatal("verified with another public key")
	}
	e.close()
	e.opts.Context = "module-2"
	e2 := e.reopen(t)
	if _, err := e2.log.Verify(); err == nil {
		t.Fatal("log of module-1 verified as module-2's")
	}
	if _, err := e2.log.BeginSign("issuing", "k1", "SHA-256", digestOf(1)); err == nil {
		t.Fatal("signature recorded in another module's log")
	}
}

func TestConcurrentSignersAndAppends(t *testing.T) {
	e := newEnvOpts(t, Options{MaxUnsynced: 16})
	const workers, each = 8, 40
	var wg sync.WaitGroup
	errs := make(chan error, workers*each+10)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				tk, err := e.log.BeginSign("issuing", fmt.Sprintf("k%d", w), "SHA-256", digestOf(w*1000+i))
				if err == nil {
					err = e.log.Wait(tk)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for i := range 10 {
		if _, err := e.log.Append("share-accepted", "issuing", map[string]string{"i": fmt.Sprint(i)}); err != nil {
			errs <- err
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	h, err := e.log.Verify()
	if err != nil || h.Count != workers*each+10 {
		t.Fatalf("verify: %+v, %v", h, err)
	}
	evs, err := e.log.Events(1, 0)
	if err != nil || len(evs) != workers*each+10 {
		t.Fatalf("events: %d, %v", len(evs), err)
	}
	seen := map[string]bool{}
	for _, ev := range evs {
		if ev.Type == "sign" {
			seen[ev.Fields["digest"]] = true
		}
	}
	if len(seen) != workers*each {
		t.Fatalf("%d distinct signature digests, want %d", len(seen), workers*each)
	}
}

// Wait lets at most MaxUnsynced records run ahead of the last sync; the
// next one waits for a flush, which starts at once although the interval
// is an hour.
func TestUnsyncedBacklogIsBounded(t *testing.T) {
	e := newEnvOpts(t, Options{FlushInterval: time.Hour, MaxUnsynced: 4})
	for i := range 4 {
		e.sign(t, i) // seq 1..4: within the bound, no flush (the interval is an hour)
	}
	if got := e.log.synced.Load(); got != 0 {
		t.Fatalf("synced %d, want 0: the flusher did not wait its interval", got)
	}
	tk := e.sign(t, 10) // seq 5 > 0+4: Wait returns only after a flush
	if got := e.log.synced.Load(); got < tk.Seq() {
		t.Fatalf("Wait returned with record %d unsynced (synced %d)", tk.Seq(), got)
	}
}

func TestCommitFailureIsSticky(t *testing.T) {
	e := newEnv(t, 1)
	// Closing the database under the log makes the next commit fail.
	e.db.Close()
	if _, err := e.log.Append("seal", "issuing", nil); err == nil {
		t.Fatal("append succeeded on a closed database")
	}
	if _, err := e.log.BeginSign("issuing", "k1", "SHA-256", digestOf(1)); err == nil {
		t.Fatal("log accepted a signature after a failed commit")
	}
}

// A record is written when BeginSign returns, so what can fail later is
// its sync: a signer whose record is beyond the unsynced bound gets its
// signature withheld when the segment cannot be synced, and the log
// refuses everything after.
func TestSyncFailureWithholdsSignatures(t *testing.T) {
	e, tk := brokenSegmentTicket(t, 1)
	// seq 2 is beyond the bound and cannot be synced, so its signature
	// must be withheld.
	if err := e.log.Wait(tk); err == nil {
		t.Fatal("Wait released a record beyond the unsynced bound that could not be synced")
	}
	if _, err := e.log.BeginSign("issuing", "k1", "SHA-256", digestOf(3)); err == nil {
		t.Fatal("log accepted a signature after a failed sync")
	}
	if _, err := e.log.Append("seal", "", nil); err == nil {
		t.Fatal("log accepted an event after a failed sync")
	}
}

// A signer whose Wait runs an overdue flush itself, and that flush fails,
// is told so: its record was never synced and the log is broken, so the
// signature must be withheld, as when the flusher's own flush fails.
func TestWaitOverdueFlushFailureWithholds(t *testing.T) {
	e, tk := brokenSegmentTicket(t, 100)
	e.log.lastFlush.Store(0) // overdue: Wait syncs itself
	if err := e.log.Wait(tk); err == nil {
		t.Fatalf("Wait released record %d: its own flush failed (log failed: %v, synced up to %d)", tk.Seq(), e.log.failed.Load(), e.log.synced.Load())
	}
}

// brokenSegmentTicket signs record 1 (not synced: the flush interval is an
// hour), begins record 2, and then makes the segment fail under the log,
// as an I/O error would, so that the next sync fails.
func brokenSegmentTicket(t *testing.T, maxUnsynced int) (*env, Ticket) {
	t.Helper()
	e := newEnvOpts(t, Options{FlushInterval: time.Hour, MaxUnsynced: maxUnsynced})
	e.sign(t, 0)
	tk, err := e.log.BeginSign("issuing", "k1", "SHA-256", digestOf(1))
	if err != nil {
		t.Fatal(err)
	}
	e.log.mu.Lock()
	e.log.seg.Close()
	e.log.mu.Unlock()
	return e, tk
}

// Flushes keep the signed head in the segment's two slots; the database
// keeps the head of its last record. The newer one counts.
func TestHeadSlots(t *testing.T) {
	e := newEnvOpts(t, Options{FlushInterval: time.Hour})
	e.appendMixed(t, 4) // database head: 4
	for i := range 5 {
		e.sign(t, 100+i)
	}
	if err := e.log.Sync(); err != nil {
		t.Fatal(err)
	}
	var stored storedHead
	e.db.View(func(tx *bolt.Tx) error { return json.Unmarshal(tx.Bucket(headBucket).Get(headKey), &stored) })
	h, err := e.log.Head()
	if err != nil || h.Count != 9 || stored.Count != 4 {
		t.Fatalf("head %+v (%v), database head %d", h, err, stored.Count)
	}
	if v, err := e.log.Verify(); err != nil || v != h {
		t.Fatalf("verify %+v, %v", v, err)
	}
	e.close()
	slotAt := func(data []byte) int { // the slot holding the newest head
		s := readSlots(strings.NewReader(string(data)))
		if s[1] != nil && (s[0] == nil || s[1].Count > s[0].Count) {
			return slotOffset + slotLen
		}
		return slotOffset
	}

	t.Run("forged slot", func(t *testing.T) {
		e2 := e.reopen(t)
		e2.editSegment(t, func(d []byte, _, _ []int) []byte {
			at := slotAt(d)
			d[at+4+7]++ // count 10: the signature no longer verifies
			binary.BigEndian.PutUint32(d[at:], crc32.Checksum(d[at+4:at+slotLen], castagnoli))
			return d
		})
		e2.close()
		e3 := e2.reopen(t)
		var aerr *hsm.AuditError
		if _, err := e3.log.Verify(); !errors.As(err, &aerr) || !strings.Contains(aerr.Reason, "signature") {
			t.Fatalf("verify with a forged head slot: %v", err)
		}
		if _, err := e3.log.BeginSign("issuing", "k1", "SHA-256", digestOf(1)); err == nil {
			t.Fatal("signature accepted with a forged head")
		}
		// Restore for the next case.
		e3.close()
		e3.editSegment(t, func(d []byte, _, _ []int) []byte {
			at := slotAt(d)
			d[at+4+7]--
			binary.BigEndian.PutUint32(d[at:], crc32.Checksum(d[at+4:at+slotLen], castagnoli))
			return d
		})
	})

	t.Run("torn slot", func(t *testing.T) {
		e2 := e.reopen(t)
		e2.close()
		e2.editSegment(t, func(d []byte, _, _ []int) []byte {
			d[slotAt(d)+30] ^= 0xff // CRC no longer matches: a torn write
			return d
		})
		e3 := e2.reopen(t)
		// The older head counts; the records after it are read again
		// and covered anew.
		if h, err := e3.log.Verify(); err != nil || h.Count != 9 {
			t.Fatalf("verify with a torn head slot: %+v, %v", h, err)
		}
	})
}

func TestClosedLogRefuses(t *testing.T) {
	e := newEnv(t, 2)
	e.log.Close()
	if _, err := e.log.Append("seal", "", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: %v", err)
	}
	if _, err := e.log.BeginSign("issuing", "k1", "SHA-256", digestOf(1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("signature after close: %v", err)
	}
	// Reading still works on a closed log.
	if h, err := e.log.Verify(); err != nil || h.Count != 2 {
		t.Fatalf("verify after close: %+v, %v", h, err)
	}
}

func TestSignFieldLimits(t *testing.T) {
	e := newEnv(t, 0)
	for name, f := range map[string]func() error{
		"no key":      func() error { _, err := e.log.BeginSign("p", "", "SHA-256", digestOf(1)); return err },
		"no digest":   func() error { _, err := e.log.BeginSign("p", "k", "SHA-256", nil); return err },
		"long digest": func() error { _, err := e.log.BeginSign("p", "k", "SHA-256", make([]byte, 256)); return err },
		"bad utf8":    func() error { _, err := e.log.BeginSign("p\xff", "k", "SHA-256", digestOf(1)); return err },
	} {
		if err := f(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if h, err := e.log.Verify(); err != nil || h.Count != 0 {
		t.Fatalf("verify: %+v, %v", h, err)
	}
}

func TestSegmentFileMode(t *testing.T) {
	e := newEnv(t, 3)
	st, err := os.Stat(e.segPath())
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("segment mode: %v, %v", st, err)
	}
}

func TestSignHashMatchesRecordHash(t *testing.T) {
	prev := sha256.Sum256([]byte("prev"))
	for _, digest := range [][]byte{digestOf(1), {0}, make([]byte, 64)} {
		rec := signRecord{seq: 42, time: time.Date(2026, 1, 2, 3, 4, 5, 6789, time.UTC).UnixNano(), partition: "issuing", key: "0123abcd", hashName: "SHA-512", digest: digest}
		rec.hash = signHash(rec.seq, rec.time, rec.partition, rec.key, rec.hashName, rec.digest, &prev)
		ev := rec.event(prev)
		want, err := recordHash(&ev)
		if err != nil || want != rec.hash {
			t.Fatalf("signHash differs from recordHash for %+v", rec)
		}
	}
}

func TestVerifyExtends(t *testing.T) {
	e := newEnv(t, 5)
	known, err := e.log.Head()
	if err != nil {
		t.Fatal(err)
	}
	e.appendMixed(t, 3)
	if h, err := e.log.VerifyExtends(known); err != nil || h.Count != 8 {
		t.Fatalf("extends: %+v, %v", h, err)
	}
	// Rewrite the whole log with the file's own key (the segment and the
	// database's record of it too): Verify passes, the known head does not.
	e.log.Close()
	err = e.db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(recordsBucket); err != nil {
			return err
		}
		if _, err := tx.CreateBucket(recordsBucket); err != nil {
			return err
		}
		if err := tx.Bucket(headBucket).Delete(segmentKey); err != nil {
			return err
		}
		return tx.Bucket(headBucket).Delete(headKey)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(e.segPath()); err != nil {
		t.Fatal(err)
	}
	l, err := Open(e.db, e.key, Options{Context: "module-1"})
	if err != nil {
		t.Fatal(err)
	}
	e.log = l
	e.appendMixed(t, 6)
	if _, err := l.Verify(); err != nil {
		t.Fatalf("rewritten log should verify on its own: %v", err)
	}
	var aerr *hsm.AuditError
	if _, err := l.VerifyExtends(known); !errors.As(err, &aerr) || aerr.Seq != 5 {
		t.Fatalf("rewritten log against the known head: %v", err)
	}
	short := known
	short.Count = 9
	if _, err := l.VerifyExtends(short); !errors.As(err, &aerr) || !strings.Contains(aerr.Reason, "truncated") {
		t.Fatalf("longer known head: %v", err)
	}
	other := known
	other.PublicKey = "AAAA"
	if _, err := l.VerifyExtends(other); err == nil {
		t.Fatal("accepted another pinned key")
	}
}

func TestRecordEncodingMatchesJSON(t *testing.T) {
	tests := []map[string]string{
		nil,
		{"key": "abc", "digest": strings.Repeat("0f", 32)},
		{"quote\"back\\slash": "ctl\x00\x01\n\t\x1f", "html": "<a href='x'>&amp;</a>", "uni": "żółw \u2028 ☃"},
	}
	for i, fields := range tests {
		ev := hsm.AuditEvent{Seq: uint64(i + 1), Time: time.Date(2026, 1, 2, 3, 4, 5, 6789, time.UTC), Type: "sign",
			Partition: "p\"1", Fields: fields, Prev: strings.Repeat("00", 32), Hash: strings.Repeat("ab", 32)}
		if i == 0 {
			ev.Partition = ""
		}
		var got hsm.AuditEvent
		if err := json.Unmarshal(appendRecord(nil, &ev), &got); err != nil {
			t.Fatalf("case %d: %v\n%s", i, err, appendRecord(nil, &ev))
		}
		if !got.Time.Equal(ev.Time) || got.Seq != ev.Seq || got.Type != ev.Type || got.Partition != ev.Partition ||
			got.Prev != ev.Prev || got.Hash != ev.Hash || fmt.Sprint(got.Fields) != fmt.Sprint(ev.Fields) {
			t.Fatalf("case %d: decoded %+v, want %+v", i, got, ev)
		}
	}
}

func TestInvalidUTF8StillVerifies(t *testing.T) {
	e := newEnv(t, 0)
	if _, err := e.log.Append("sign\xff", "p\xfe", map[string]string{"k\xc3": "v\xc3\x28"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.log.Verify(); err != nil {
		t.Fatal(err)
	}
}

func FuzzRecordEncoding(f *testing.F) {
	f.Add("sign", "issuing", "key", "v")
	f.Add("a\x00", "\xff", "\"", "\\u0000")
	f.Fuzz(func(t *testing.T, typ, part, k, v string) {
		ev := hsm.AuditEvent{Seq: 1, Time: time.Unix(0, 12345).UTC(), Type: validUTF8(typ), Partition: validUTF8(part),
			Fields: map[string]string{validUTF8(k): validUTF8(v)}, Prev: "00", Hash: "11"}
		var got hsm.AuditEvent
		if err := json.Unmarshal(appendRecord(nil, &ev), &got); err != nil {
			t.Fatal(err)
		}
		if got.Type != ev.Type || got.Partition != ev.Partition || got.Fields[validUTF8(k)] != ev.Fields[validUTF8(k)] {
			t.Fatalf("round trip: %+v vs %+v", got, ev)
		}
	})
}

// FuzzSegment feeds arbitrary bytes to the segment reader (the segment
// file is outside input): it must not panic, and every frame it accepts
// must re-encode to the same bytes.
func FuzzSegment(f *testing.F) {
	h := sha256.Sum256([]byte("h"))
	good := appendSignFrame(nil, 1, 12345, &h, "issuing", "k1", "SHA-256", digestOf(1))
	good = appendSignFrame(good, 2, 12346, &h, "", "k2", "message-sha256", digestOf(2))
	f.Add(good)
	f.Add(good[:len(good)-3])
	f.Add(append(append([]byte(nil), good...), 0, 0, 0, 0, 0, 0, 0, 0))
	f.Add([]byte{0, 0, 0, 49, 0, 0, 0, 0})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		sr := newSegReader(strings.NewReader(string(data)), 0, int64(len(data)))
		var rec signRecord
		for range 1000 {
			start := sr.off
			ok, err := sr.next(&rec)
			if err != nil || !ok {
				var ferr *frameError
				if err != nil && !errors.As(err, &ferr) {
					t.Fatalf("non-frame error: %v", err)
				}
				return
			}
			again := appendSignFrame(nil, rec.seq, rec.time, &rec.hash, rec.partition, rec.key, rec.hashName, rec.digest)
			if string(again) != string(data[start:sr.off]) {
				t.Fatalf("frame at %d does not re-encode to itself", start)
			}
		}
	})
}

// FuzzSegmentTail reads arbitrary bytes after a segment header the way
// Open reads the records after the signed head: it must not fail, and it
// ends either on a clean end (the rest zeros) or on a torn end that starts
// after the last complete record.
func FuzzSegmentTail(f *testing.F) {
	h := sha256.Sum256([]byte("h"))
	good := appendSignFrame(nil, 1, 12345, &h, "issuing", "k1", "SHA-256", digestOf(1))
	f.Add(good)
	f.Add(append(append([]byte(nil), good...), make([]byte, 300)...))
	f.Add(append(append(append([]byte(nil), good...), make([]byte, 300)...), 1))
	f.Add(good[:len(good)-3])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<20 {
			return
		}
		path := filepath.Join(t.TempDir(), "seg")
		if err := os.WriteFile(path, append(make([]byte, segHeaderLen), data...), 0o600); err != nil {
			t.Fatal(err)
		}
		seg, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer seg.Close()
		l := &Log{seg: seg, hdrLen: segHeaderLen}
		size := int64(segHeaderLen + len(data))
		l.off = segHeaderLen
		if err := l.readTail(segHeaderLen, size); err != nil {
			t.Fatalf("readTail: %v", err)
		}
		end := l.off
		switch {
		case l.broken != nil:
			// Complete records that do not chain from a zero hash.
		case l.torn != nil:
			if l.torn.off != end || l.torn.off+l.torn.size != size {
				t.Fatalf("torn end at %d+%d, records end at %d, file %d", l.torn.off, l.torn.size, end, size)
			}
		default:
			for _, c := range data[end-segHeaderLen:] {
				if c != 0 {
					t.Fatalf("clean end at %d with non-zero bytes after it", end)
				}
			}
		}
	})
}

func BenchmarkAppend(b *testing.B) {
	e := newEnv(b, 0)
	fields := map[string]string{"key": "0123456789abcdef0123456789abcdef", "reason": "bench"}
	for b.Loop() {
		if _, err := e.log.Append("seal", "issuing", fields); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBeginSign is the audit cost of one signature: the record
// written (BeginSign) and released (Wait).
func BenchmarkBeginSign(b *testing.B) {
	e := newEnv(b, 0)
	digest := digestOf(1)
	key := "0123456789abcdef0123456789abcdef"
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			tk, err := e.log.BeginSign("issuing", key, "SHA-256", digest)
			if err == nil {
				err = e.log.Wait(tk)
			}
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(64)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				tk, err := e.log.BeginSign("issuing", key, "SHA-256", digest)
				if err == nil {
					err = e.log.Wait(tk)
				}
				if err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

func TestForeignSegmentRefused(t *testing.T) {
	for want, content := range map[string]string{
		"format v1":                 "hsmca audit segment v1\x00\x08module-1" + strings.Repeat("\x00", 2000),
		"does not name this module": strings.Repeat("x", 2000),
	} {
		name := want
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, SegmentFile), []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			e := openEnv(t, filepath.Join(dir, "module.db"), newKey(t), Options{})
			var aerr *hsm.AuditError
			if _, err := e.log.Verify(); !errors.As(err, &aerr) || !strings.Contains(aerr.Reason, want) {
				t.Fatalf("verify: %v", err)
			}
			if _, err := e.log.BeginSign("issuing", "k1", "SHA-256", digestOf(1)); err == nil {
				t.Fatal("signature recorded in a foreign segment")
			}
		})
	}
}

// A signer that finds the sync overdue (the flusher was not scheduled in
// time) syncs itself.
func TestOverdueSyncBySigner(t *testing.T) {
	e := newEnvOpts(t, Options{FlushInterval: time.Millisecond})
	// Starve the flusher for good.
	close(e.log.stop)
	<-e.log.done
	e.log.stop, e.log.done = make(chan struct{}), make(chan struct{})
	go func() { <-e.log.stop; close(e.log.done) }()
	e.log.lastFlush.Store(time.Now().Add(time.Hour).UnixNano()) // not overdue
	tk := e.sign(t, 1)
	if got := e.log.synced.Load(); got >= tk.Seq() {
		t.Fatalf("synced %d before the sync was overdue", got)
	}
	e.log.lastFlush.Store(time.Now().Add(-time.Second).UnixNano())
	tk = e.sign(t, 2)
	if got := e.log.synced.Load(); got < tk.Seq() {
		t.Fatalf("overdue sync not done by the signer: synced %d, record %d", got, tk.Seq())
	}
}

// A v2 segment (no space allocated ahead of the records) opens as v3: the
// header is upgraded in place and the log verifies and grows.
func TestSegmentV2Upgraded(t *testing.T) {
	e := newEnv(t, 5)
	e.close()
	data, err := os.ReadFile(e.segPath())
	if err != nil {
		t.Fatal(err)
	}
	copy(data, segMagicV2)
	if err := os.WriteFile(e.segPath(), data, 0o600); err != nil {
		t.Fatal(err)
	}
	e2 := e.reopen(t)
	if h, err := e2.log.Verify(); err != nil || h.Count != 5 {
		t.Fatalf("verify of an upgraded v2 segment: %+v, %v", h, err)
	}
	e2.sign(t, 6)
	if h, err := e2.log.Verify(); err != nil || h.Count != 6 {
		t.Fatalf("verify after a signature: %+v, %v", h, err)
	}
	got, err := os.ReadFile(e.segPath())
	if err != nil || !strings.HasPrefix(string(got), segMagic) {
		t.Fatalf("header after upgrade: %q, %v", got[:len(segMagic)], err)
	}
}

// SyncWritten makes every record written so far durable at once, although
// the flush interval is an hour; concurrent callers all return with their
// records synced.
func TestSyncWrittenSyncsNow(t *testing.T) {
	e := newEnvOpts(t, Options{FlushInterval: time.Hour})
	if err := e.log.SyncWritten(); err != nil { // nothing written: no-op
		t.Fatal(err)
	}
	var last Ticket
	for i := range 3 {
		last = e.sign(t, i)
	}
	if got := e.log.synced.Load(); got != 0 {
		t.Fatalf("synced %d before SyncWritten, want 0 (the interval is an hour)", got)
	}
	if err := e.log.SyncWritten(); err != nil {
		t.Fatal(err)
	}
	if got := e.log.synced.Load(); got < last.Seq() {
		t.Fatalf("SyncWritten returned with record %d unsynced (synced %d)", last.Seq(), got)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tk := e.sign(t, 100+i)
			if err := e.log.SyncWritten(); err != nil {
				t.Error(err)
				return
			}
			if got := e.log.synced.Load(); got < tk.Seq() {
				t.Errorf("SyncWritten returned with record %d unsynced (synced %d)", tk.Seq(), got)
			}
		}()
	}
	wg.Wait()
	if _, err := e.log.Verify(); err != nil {
		t.Fatal(err)
	}
}

// SyncWritten reports a log that failed before the records were synced.
func TestSyncWrittenReportsFailure(t *testing.T) {
	e := newEnvOpts(t, Options{FlushInterval: time.Hour})
	e.sign(t, 1)
	e.log.fail(errors.New("injected sync failure"))
	if err := e.log.SyncWritten(); err == nil {
		t.Fatal("SyncWritten succeeded on a failed log with an unsynced record")
	}
}

// TestReadOnlyOpenAfterCrashWritesNothing: a reader's open (read-only
// database) of a log with records after its head, as a kill -9 leaves it,
// neither syncs the segment nor fails where the media refuse fsync
// (squashfs, iso9660); the log verifies.
func TestReadOnlyOpenAfterCrashWritesNothing(t *testing.T) {
	e := newEnvOpts(t, Options{FlushInterval: time.Hour})
	e.appendMixed(t, 4)
	for i := range 3 {
		e.sign(t, 100+i) // written, not flushed
	}
	e.crash(t)
	synced := 0
	syncOpenedSegment = func(*os.File) error { synced++; return syscall.EINVAL }
	t.Cleanup(func() { syncOpenedSegment = (*os.File).Sync })
	db, err := bolt.Open(e.path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	opts := e.opts
	opts.Context = "module-1"
	l, err := Open(db, e.key, opts)
	if err != nil {
		t.Fatalf("read-only open after a crash: %v", err)
	}
	defer l.Close()
	if h, err := l.Verify(); err != nil || h.Count != 7 {
		t.Fatalf("verify: %+v, %v", h, err)
	}
	if synced != 0 {
		t.Fatalf("a reader's open synced the segment %d time(s)", synced)
	}
}
