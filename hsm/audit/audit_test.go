package audit

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hsmca/hsmca/hsm"
	bolt "go.etcd.io/bbolt"
)

type env struct {
	path string
	db   *bolt.DB
	key  ed25519.PrivateKey
	log  *Log
}

func openEnv(t testing.TB, path string, key ed25519.PrivateKey) *env {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	l, err := Open(db, key, Options{Context: "module-1"})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{path: path, db: db, key: key, log: l}
	t.Cleanup(e.close)
	return e
}

func (e *env) close() {
	e.log.Close()
	e.db.Close()
}

func newEnv(t testing.TB, records int) *env {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	e := openEnv(t, filepath.Join(t.TempDir(), "module.db"), key)
	for i := range records {
		if _, err := e.log.Append("sign", "issuing", map[string]string{"key": "k1", "digest": fmt.Sprintf("%064x", i)}); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// edit changes the stored records directly, as an attacker with the file would.
func (e *env) edit(t *testing.T, f func(b *bolt.Bucket)) {
	t.Helper()
	err := e.db.Update(func(tx *bolt.Tx) error { f(tx.Bucket(recordsBucket)); return nil })
	if err != nil {
		t.Fatal(err)
	}
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
	evs, err := e.log.Events(4, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 3 || evs[0].Seq != 4 || evs[2].Seq != 6 || evs[1].Prev != evs[0].Hash {
		t.Fatalf("events: %+v", evs)
	}
}

func TestVerifyDetectsTampering(t *testing.T) {
	tests := []struct {
		name    string
		tamper  func(t *testing.T, e *env)
		wantSeq uint64
		reason  string
	}{
		{"field changed", func(t *testing.T, e *env) {
			e.edit(t, func(b *bolt.Bucket) {
				var ev hsm.AuditEvent
				json.Unmarshal(b.Get(seqKey(4)), &ev)
				ev.Fields["key"] = "k2"
				v, _ := json.Marshal(ev)
				b.Put(seqKey(4), v)
			})
		}, 4, "altered"},
		{"time changed", func(t *testing.T, e *env) {
			e.edit(t, func(b *bolt.Bucket) {
				var ev hsm.AuditEvent
				json.Unmarshal(b.Get(seqKey(2)), &ev)
				ev.Time = ev.Time.Add(time.Nanosecond)
				v, _ := json.Marshal(ev)
				b.Put(seqKey(2), v)
			})
		}, 2, "altered"},
		{"record deleted", func(t *testing.T, e *env) {
			e.edit(t, func(b *bolt.Bucket) { b.Delete(seqKey(5)) })
		}, 5, "missing"},
		{"records swapped", func(t *testing.T, e *env) {
			e.edit(t, func(b *bolt.Bucket) {
				a, c := append([]byte(nil), b.Get(seqKey(3))...), append([]byte(nil), b.Get(seqKey(6))...)
				b.Put(seqKey(3), c)
				b.Put(seqKey(6), a)
			})
		}, 3, "moved"},
		{"truncated", func(t *testing.T, e *env) {
			e.edit(t, func(b *bolt.Bucket) { b.Delete(seqKey(10)); b.Delete(seqKey(9)) })
		}, 9, "truncated"},
		{"head re-signed with another key", func(t *testing.T, e *env) {
			_, other, _ := ed25519.GenerateKey(rand.Reader)
			l2 := &Log{key: other, ctx: "module-1"}
			e.edit(t, func(b *bolt.Bucket) { b.Delete(seqKey(10)) })
			err := e.db.Update(func(tx *bolt.Tx) error {
				var ev hsm.AuditEvent
				json.Unmarshal(tx.Bucket(recordsBucket).Get(seqKey(9)), &ev)
				sh := storedHead{Count: 9, Hash: ev.Hash, Sig: ed25519.Sign(other, l2.headMessage(9, ev.Hash))}
				v, _ := json.Marshal(sh)
				return tx.Bucket(headBucket).Put(headKey, v)
			})
			if err != nil {
				t.Fatal(err)
			}
		}, 9, "signature"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, 10)
			tc.tamper(t, e)
			_, err := e.log.Verify()
			var aerr *hsm.AuditError
			if !errors.As(err, &aerr) {
				t.Fatalf("Verify = %v, want *hsm.AuditError", err)
			}
			if aerr.Seq != tc.wantSeq || !strings.Contains(aerr.Reason, tc.reason) {
				t.Fatalf("got %v, want record %d, reason containing %q", aerr, tc.wantSeq, tc.reason)
			}
			// A reopened log refuses appends on a tampered chain only when
			// the tail no longer matches the signed head.
			e.log.Close()
			l, err := Open(e.db, e.key, Options{Context: "module-1"})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			_, aerr2 := l.Append("seal", "issuing", nil)
			tailBroken := tc.name == "truncated" || tc.name == "head re-signed with another key"
			if tailBroken && aerr2 == nil {
				t.Fatal("append accepted on a log whose tail does not match its signed head")
			}
		})
	}
}

func TestReopenContinuesChain(t *testing.T) {
	e := newEnv(t, 3)
	e.close()
	e2 := openEnv(t, e.path, e.key)
	ev, err := e2.log.Append("seal", "root", map[string]string{"reason": "test"})
	if err != nil {
		t.Fatal(err)
	}
	if ev.Seq != 4 {
		t.Fatalf("seq after reopen = %d, want 4", ev.Seq)
	}
	if h, err := e2.log.Verify(); err != nil || h.Count != 4 || h.Hash != ev.Hash {
		t.Fatalf("verify after reopen: %+v, %v", h, err)
	}
}

func TestOtherContextOrKeyFails(t *testing.T) {
	e := newEnv(t, 2)
	other, _, _ := ed25519.GenerateKey(rand.Reader)
	if _, err := e.log.VerifyWithKey(other); err == nil {
		t.Fatal("verified with another public key")
	}
	l := &Log{db: e.db, pub: e.log.pub, ctx: "module-2"}
	if _, err := l.Verify(); err == nil {
		t.Fatal("head of module-1 verified as module-2's")
	}
}

func TestConcurrentAppends(t *testing.T) {
	e := newEnv(t, 0)
	const workers, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				p, err := e.log.Begin("sign", "issuing", map[string]string{"w": fmt.Sprint(w), "i": fmt.Sprint(i)})
				if err == nil {
					err = p.Wait()
				}
				if err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	h, err := e.log.Verify()
	if err != nil || h.Count != workers*each {
		t.Fatalf("verify: %+v, %v", h, err)
	}
}

func TestCommitFailureIsSticky(t *testing.T) {
	e := newEnv(t, 1)
	// Closing the database under the log makes the next commit fail.
	e.db.Close()
	if _, err := e.log.Append("sign", "issuing", nil); err == nil {
		t.Fatal("append succeeded on a closed database")
	}
	if _, err := e.log.Begin("sign", "issuing", nil); err == nil {
		t.Fatal("log accepted an append after a failed commit")
	}
}

func TestClosedLogRefuses(t *testing.T) {
	e := newEnv(t, 1)
	e.log.Close()
	if _, err := e.log.Append("seal", "", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: %v", err)
	}
}

func BenchmarkAppend(b *testing.B) {
	e := newEnv(b, 0)
	fields := map[string]string{"key": "0123456789abcdef0123456789abcdef", "digest": strings.Repeat("ab", 32)}
	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			if _, err := e.log.Append("sign", "issuing", fields); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.SetParallelism(64)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := e.log.Append("sign", "issuing", fields); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
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

func TestVerifyExtends(t *testing.T) {
	e := newEnv(t, 5)
	known, err := e.log.Head()
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := e.log.Append("seal", "root", nil); err != nil {
			t.Fatal(err)
		}
	}
	if h, err := e.log.VerifyExtends(known); err != nil || h.Count != 8 {
		t.Fatalf("extends: %+v, %v", h, err)
	}
	// Rewrite the whole log with the file's own key: Verify passes, the
	// known head does not.
	e.log.Close()
	err = e.db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(recordsBucket); err != nil {
			return err
		}
		if _, err := tx.CreateBucket(recordsBucket); err != nil {
			return err
		}
		return tx.Bucket(headBucket).Delete(headKey)
	})
	if err != nil {
		t.Fatal(err)
	}
	l, err := Open(e.db, e.key, Options{Context: "module-1"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for range 6 {
		if _, err := l.Append("sign", "issuing", map[string]string{"forged": "yes"}); err != nil {
			t.Fatal(err)
		}
	}
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
