package store

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/hsmca/hsmca/ca"
)

// openFoldOnDemand opens a store at path whose background folder never
// folds during a test: folds happen only through ListCerts,
// RevokedSerials and Close, at the moments the test picks.
func openFoldOnDemand(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	s.calog.foldDelay = time.Hour
	return s
}

// failFoldOnce makes the next fold fail at stage ("commit" or "remove").
func failFoldOnce(t *testing.T, stage string) {
	t.Helper()
	armed := true
	testHookFold = func(s string) error {
		if armed && s == stage {
			armed = false
			return errors.New("injected: fold " + s + " failed")
		}
		return nil
	}
	t.Cleanup(func() { testHookFold = nil })
}

func revoke(t *testing.T, s *Store, serial string) {
	t.Helper()
	_, err := s.UpdateRevocation(context.Background(), serial, func(r *ca.Record) error {
		r.Status, r.RevokedAt, r.Reason = ca.StatusRevoked, time.Now().UTC(), ca.ReasonKeyCompromise
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A fold that fails after switching segments (its bbolt commit, or the
// removal of the folded segment) leaves an old segment on disk. The next
// fold must remove it along with its own: otherwise the next Open replays
// the old segment's states over the newer ones bbolt holds, and an
// acknowledged revocation comes back as "valid".
func TestCALogFailedFoldLeavesNoStaleSegment(t *testing.T) {
	for _, stage := range []string{"commit", "remove"} {
		t.Run(stage, func(t *testing.T) {
			ctx := context.Background()
			path := filepath.Join(t.TempDir(), "ca.db")
			s := openFoldOnDemand(t, path)
			na := time.Now().Add(time.Hour).UTC()
			if err := s.ReserveSerial(ctx, rec("aa", "i1", na)); err != nil {
				t.Fatal(err)
			}
			if err := s.StoreIssued(ctx, "aa", []byte("final"), nil); err != nil {
				t.Fatal(err)
			}
			failFoldOnce(t, stage)
			if _, err := s.ListCerts(ctx, ca.Query{}); err == nil {
				t.Fatal("ListCerts: the injected fold failure was not reported")
			}
			revoke(t, s, "aa") // acknowledged: durable in the log
			if _, err := s.ListCerts(ctx, ca.Query{}); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if left, _ := filepath.Glob(path + caLogSuffix + "*"); len(left) != 0 {
				t.Errorf("segments left after a clean Close: %v", left)
			}
			s = openFoldOnDemand(t, path)
			defer s.Close()
			r, err := s.CertBySerial(ctx, "aa")
			if err != nil {
				t.Fatal(err)
			}
			revoked, err := s.RevokedSerials(ctx, "i1")
			if err != nil {
				t.Fatal(err)
			}
			if r.Status != ca.StatusRevoked || len(revoked) != 1 {
				t.Fatalf("after reopen: status %s, %d revoked; the acknowledged revocation was rolled back", r.Status, len(revoked))
			}
		})
	}
}

// A write whose log write fails is reported as failed, and readers keep
// being served the last durable state, not the one that failed: OCSP and
// `cert show` must not report a revocation that a restart takes back.
func TestCALogFailedWriteNotServed(t *testing.T) {
	ctx := context.Background()
	s := openFoldOnDemand(t, filepath.Join(t.TempDir(), "ca.db"))
	defer s.Close()
	na := time.Now().Add(time.Hour).UTC()
	if err := s.ReserveSerial(ctx, rec("bb", "i1", na)); err != nil {
		t.Fatal(err)
	}
	if err := s.StoreIssued(ctx, "bb", []byte("final"), nil); err != nil {
		t.Fatal(err)
	}
	// Closing the segment's file makes the next write fail, as an I/O
	// error would.
	s.calog.mu.Lock()
	s.calog.seg.Close()
	s.calog.mu.Unlock()
	if _, err := s.UpdateRevocation(ctx, "bb", func(r *ca.Record) error {
		r.Status, r.RevokedAt, r.Reason = ca.StatusRevoked, time.Now().UTC(), ca.ReasonKeyCompromise
		return nil
	}); err == nil {
		t.Fatal("UpdateRevocation succeeded on a log that cannot be written")
	}
	r, err := s.CertBySerial(ctx, "bb")
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != ca.StatusValid || string(r.DER) != "final" {
		t.Fatalf("served %s (DER %q) after the failed revocation; want the durable state, valid with the final certificate", r.Status, r.DER)
	}
}

// The overlay keeps its own copies: changing a record a write returned,
// or one a read returned, changes nothing in the store.
func TestCALogOverlayCopies(t *testing.T) {
	ctx := context.Background()
	s := openFoldOnDemand(t, filepath.Join(t.TempDir(), "ca.db"))
	defer s.Close()
	na := time.Now().Add(time.Hour).UTC()
	if err := s.ReserveSerial(ctx, rec("cc", "i1", na)); err != nil {
		t.Fatal(err)
	}
	got, err := s.UpdateRevocation(ctx, "cc", func(r *ca.Record) error {
		r.Status, r.RevokedAt, r.Reason = ca.StatusRevoked, time.Now().UTC(), ca.ReasonSuperseded
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got.DER[0] ^= 0xff
	got.Names[0] = "changed.example"
	r, err := s.CertBySerial(ctx, "cc")
	if err != nil {
		t.Fatal(err)
	}
	if string(r.DER) != "linted-cc" || r.Names[0] != "a.svc.corp" {
		t.Fatalf("the store's record changed with the caller's copy: DER %q, names %v", r.DER, r.Names)
	}
}

// FuzzCALogFrames: readFrames never panics on arbitrary segment bytes, and
// frames written by appendFrame, followed by the zeros a segment is made
// with, read back whole and in order.
func FuzzCALogFrames(f *testing.F) {
	f.Add([]byte{}, "1a", []byte("state"))
	f.Add([]byte{0, 0, 0, 5, 1, 2, 3, 4, 0, 1, 'a', 'b', 'c'}, "ff", []byte{})
	f.Fuzz(func(t *testing.T, raw []byte, serial string, enc []byte) {
		_ = readFrames(raw, func(string, []byte) error { return nil })
		if serial == "" || len(serial) > 64 || len(enc) > 1<<16 {
			return
		}
		seg := appendFrame(nil, serial, enc)
		seg = appendFrame(seg, serial+"x", enc)
		seg = append(seg, make([]byte, 64)...)
		var got []string
		err := readFrames(seg, func(s string, e []byte) error {
			if !bytes.Equal(e, enc) {
				t.Fatalf("frame of %q read back %x, wrote %x", s, e, enc)
			}
			got = append(got, s)
			return nil
		})
		if err != nil || len(got) != 2 || got[0] != serial || got[1] != serial+"x" {
			t.Fatalf("read back %q, %v; wrote %q and %q", got, err, serial, serial+"x")
		}
	})
}
