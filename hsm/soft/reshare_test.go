package soft

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsmca/hsmca/hsm"
	bolt "go.etcd.io/bbolt"
)

// Old shares together with a copy of module.db made before a re-share (a
// backup, a disk image) must not open a key generated after it: the
// re-share replaces the master key, not only its wrapping.
func TestOldSharesAndOldBackupDoNotOpenKeysMadeAfterReshare(t *testing.T) {
	f := newFixture(t)
	old := f.init(t, "issuing", 3, 2, hsm.PolicyOnline)
	f.m.Close()
	backup := filepath.Join(t.TempDir(), "backup")
	// A backup holds the module's audit segment too (a module.db without
	// it is refused as a truncated log).
	copyFile(t, filepath.Join(f.dir, FileName), filepath.Join(backup, FileName))
	copyFile(t, filepath.Join(f.dir, AuditFileName), filepath.Join(backup, AuditFileName))
	f.open(t)

	p := f.part(t, "issuing")
	activate(t, p, old[:2])
	fresh, err := p.Reshare(3, 2)
	if err != nil {
		t.Fatal(err)
	}
	f.reopen(t)
	p = f.part(t, "issuing")
	activate(t, p, fresh[:2])
	k, err := p.GenerateKey(hsm.ECDSAP256, "after-reshare", false)
	if err != nil {
		t.Fatal(err)
	}
	f.m.Close()

	// Put the new key's record (ciphertext and attributes) into the backup.
	rec := keyRecordBytes(t, filepath.Join(f.dir, FileName), k.ID)
	bdb, err := bolt.Open(filepath.Join(backup, FileName), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = bdb.Update(func(tx *bolt.Tx) error { return tx.Bucket(keysBucket).Put([]byte(k.ID), rec) })
	bdb.Close()
	if err != nil {
		t.Fatal(err)
	}

	bm, err := Open(backup, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer bm.Close()
	bp, err := bm.Partition("issuing")
	if err != nil {
		t.Fatal(err)
	}
	activate(t, bp, old[:2])
	s, err := bp.Signer(k.ID)
	if err != nil {
		t.Fatal(err)
	}
	err = signVerify(t, s)
	var lerr *hsm.KeyLoadError
	if !errors.As(err, &lerr) {
		t.Fatalf("old shares + a pre-reshare copy of module.db, key %s made after the reshare: %v, want *hsm.KeyLoadError", k.ID, err)
	}
}

// Every key of the partition signs after a re-share with the new shares,
// in the same process (cached or not) and after a reopen; its record is
// re-wrapped, keys of other partitions are left alone, and the transport
// key still receives wrapped keys.
func TestReshareKeepsEveryKey(t *testing.T) {
	f := newFixture(t)
	old := f.init(t, "issuing", 3, 2, hsm.PolicyOnline)
	otherShares := f.init(t, "other", 1, 1, hsm.PolicyOnline)
	p := f.part(t, "issuing")
	activate(t, p, old[:2])
	var ids []string
	for _, typ := range []hsm.KeyType{hsm.ECDSAP256, hsm.Ed25519, hsm.RSA2048} {
		k, err := p.GenerateKey(typ, "k-"+string(typ), false)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, k.ID)
	}
	// One key is in the signer cache before the re-share.
	s0, _ := p.Signer(ids[0])
	if err := signVerify(t, s0); err != nil {
		t.Fatal(err)
	}
	op := f.part(t, "other")
	activate(t, op, otherShares)
	ok, err := op.GenerateKey(hsm.ECDSAP256, "elsewhere", true)
	if err != nil {
		t.Fatal(err)
	}
	before := map[string][]byte{}
	for _, id := range append(slices.Clone(ids), ok.ID) {
		before[id] = keyRecordBytesTx(t, f.m.db, id)
	}

	fresh, err := p.Reshare(4, 3)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		s, _ := p.Signer(id)
		if err := signVerify(t, s); err != nil {
			t.Fatalf("key %s right after the reshare: %v", id, err)
		}
		if bytes.Equal(before[id], keyRecordBytesTx(t, f.m.db, id)) {
			t.Errorf("key %s: record not re-wrapped", id)
		}
	}
	if !bytes.Equal(before[ok.ID], keyRecordBytesTx(t, f.m.db, ok.ID)) {
		t.Errorf("key %s of another partition was rewritten", ok.ID)
	}
	// A key exported to the re-shared partition's transport key imports.
	tk, err := p.TransportKey()
	if err != nil {
		t.Fatal(err)
	}
	blob, err := op.ExportKey(ok.ID, tk)
	if err != nil {
		t.Fatal(err)
	}
	if err := op.DestroyKey(ok.ID); err != nil {
		t.Fatal(err)
	}
	imported, err := p.ImportKey(blob)
	if err != nil {
		t.Fatalf("import after the reshare: %v", err)
	}
	ids = append(ids, imported.ID)
	// Sealed and activated again in the same process: nothing cached.
	if err := p.Seal(); err != nil {
		t.Fatal(err)
	}
	activate(t, p, fresh[1:4])
	for _, id := range ids {
		s, _ := p.Signer(id)
		if err := signVerify(t, s); err != nil {
			t.Fatalf("key %s after reseal: %v", id, err)
		}
	}
	f.reopen(t)
	p = f.part(t, "issuing")
	activate(t, p, fresh[:3])
	for _, id := range ids {
		s, _ := p.Signer(id)
		if err := signVerify(t, s); err != nil {
			t.Fatalf("key %s after reopen: %v", id, err)
		}
	}
	if _, err := f.m.Audit().Verify(); err != nil {
		t.Fatal(err)
	}
}

// A prepared re-share changes nothing until Commit: a discarded one, or
// one whose Commit is refused because the partition was sealed, leaves the
// current shares working and the new ones refused, also after a reopen.
func TestPrepareReshareChangesNothingUntilCommit(t *testing.T) {
	tests := []struct {
		name   string
		finish func(t *testing.T, p hsm.Partition, pr hsm.PendingReshare, old []hsm.Share)
	}{
		{"discarded", func(t *testing.T, p hsm.Partition, pr hsm.PendingReshare, old []hsm.Share) {
			pr.Discard()
			if err := pr.Commit(); err == nil {
				t.Fatal("Commit after Discard succeeded")
			}
		}},
		{"sealed before commit", func(t *testing.T, p hsm.Partition, pr hsm.PendingReshare, old []hsm.Share) {
			if err := p.Seal(); err != nil {
				t.Fatal(err)
			}
			if err := pr.Commit(); !errors.Is(err, hsm.ErrSealed) {
				t.Fatalf("Commit on a sealed partition: %v, want ErrSealed", err)
			}
		}},
		{"sealed and activated again", func(t *testing.T, p hsm.Partition, pr hsm.PendingReshare, old []hsm.Share) {
			if err := p.Seal(); err != nil {
				t.Fatal(err)
			}
			activate(t, p, old[1:])
			if err := pr.Commit(); err == nil {
				t.Fatal("Commit in a later activation than PrepareReshare's succeeded")
			}
		}},
		{"overtaken by another reshare", func(t *testing.T, p hsm.Partition, pr hsm.PendingReshare, old []hsm.Share) {
			other, err := p.(hsm.StagedResharer).PrepareReshare(2, 2)
			if err != nil {
				t.Fatal(err)
			}
			if err := other.Commit(); err != nil {
				t.Fatal(err)
			}
			if err := pr.Commit(); err == nil {
				t.Fatal("a re-share dealt against generation 1 committed over generation 2")
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			old := f.init(t, "issuing", 3, 2, hsm.PolicyOnline)
			p := f.part(t, "issuing")
			activate(t, p, old[:2])
			k, err := p.GenerateKey(hsm.ECDSAP256, "k", false)
			if err != nil {
				t.Fatal(err)
			}
			pr, err := p.(hsm.StagedResharer).PrepareReshare(3, 2)
			if err != nil {
				t.Fatal(err)
			}
			fresh := pr.Shares()
			if len(fresh) != 3 || fresh[0].Generation != 2 {
				t.Fatalf("pending shares: %d, generation %d", len(fresh), fresh[0].Generation)
			}
			tc.finish(t, p, pr, old)
			st, _ := p.Status()
			if tc.name != "overtaken by another reshare" && st.Generation != 1 {
				t.Fatalf("generation %d after an uncommitted reshare", st.Generation)
			}
			if tc.name == "overtaken by another reshare" {
				return
			}
			f.reopen(t)
			p = f.part(t, "issuing")
			if _, err := p.AddShare(fresh[0]); err == nil {
				t.Fatal("a share of the uncommitted set was accepted")
			}
			p.Seal()
			activate(t, p, old[1:])
			s, _ := p.Signer(k.ID)
			if err := signVerify(t, s); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A re-share whose audit record cannot be written is not done: no shares
// come back and the current ones keep working, also after a restart.
func TestReshareNotAuditedKeepsCurrentShares(t *testing.T) {
	f := newFixture(t)
	shares := f.init(t, "issuing", 3, 2, hsm.PolicyOnline)
	p := f.part(t, "issuing")
	activate(t, p, shares[:2])
	f.m.log.Close() // the reshare's audit record cannot be written
	fresh, err := p.Reshare(3, 2)
	if err == nil || len(fresh) != 0 {
		t.Fatalf("reshare with a closed audit log: %d shares, %v", len(fresh), err)
	}
	f.m.Close() // reports the closed log; the module's files are what matter
	f.open(t)
	activate(t, f.part(t, "issuing"), shares[1:])
}

// An init whose audit record cannot be written creates nothing, so no
// partition exists without its shares (the name can be used again).
func TestInitNotAuditedCreatesNothing(t *testing.T) {
	f := newFixture(t)
	f.m.log.Close()
	shares, err := f.m.InitPartition(hsm.InitOptions{Partition: "issuing", Shares: 3, Threshold: 2})
	if err == nil {
		t.Fatal("init with a closed audit log succeeded")
	}
	names, _ := f.m.Partitions()
	if slices.Contains(names, "issuing") {
		t.Fatalf("partition stored although its init failed (%v; %d shares returned)", err, len(shares))
	}
	f.m.Close()
	f.open(t)
	fresh := f.init(t, "issuing", 3, 2, hsm.PolicyOnline)
	activate(t, f.part(t, "issuing"), fresh[:2])
}

// Each audited change of the module (init, key generation and import, key
// destruction, re-share) has its audit record committed before the change
// is: a crash between the two can leave a record without its change, never
// a change without its record. A change whose commit fails is followed by
// a commit-failed record and leaves the module as it was.
func TestAuditRecordCommittedBeforeChange(t *testing.T) {
	type setup struct {
		f      *fixture
		p      hsm.Partition
		shares []hsm.Share
		key    string
	}
	tests := []struct {
		event string
		do    func(s *setup) error
		// unchanged checks the module after a failed commit.
		unchanged func(t *testing.T, s *setup)
	}{
		{"init", func(s *setup) error {
			_, err := s.f.m.InitPartition(hsm.InitOptions{Partition: "second", Shares: 1, Threshold: 1})
			return err
		}, func(t *testing.T, s *setup) {
			if names, _ := s.f.m.Partitions(); slices.Contains(names, "second") {
				t.Error("partition stored although its commit failed")
			}
		}},
		{"key-generate", func(s *setup) error {
			_, err := s.p.GenerateKey(hsm.ECDSAP256, "new", false)
			return err
		}, func(t *testing.T, s *setup) {
			if _, err := s.p.Key("new"); !errors.Is(err, hsm.ErrKeyNotFound) {
				t.Errorf("key after a failed commit: %v", err)
			}
		}},
		{"key-destroy", func(s *setup) error {
			return s.p.DestroyKey(s.key)
		}, func(t *testing.T, s *setup) {
			sg, _ := s.p.Signer(s.key)
			if err := signVerify(t, sg); err != nil {
				t.Errorf("key after a failed destroy: %v", err)
			}
		}},
		{"reshare", func(s *setup) error {
			_, err := s.p.Reshare(2, 2)
			return err
		}, func(t *testing.T, s *setup) {
			sg, _ := s.p.Signer(s.key)
			if err := signVerify(t, sg); err != nil {
				t.Errorf("key after a failed reshare: %v", err)
			}
			s.f.reopen(t)
			activate(t, s.f.part(t, "issuing"), s.shares)
		}},
	}
	prepare := func(t *testing.T) *setup {
		f := newFixture(t)
		shares := f.init(t, "issuing", 1, 1, hsm.PolicyOnline)
		p := f.part(t, "issuing")
		activate(t, p, shares)
		k, err := p.GenerateKey(hsm.ECDSAP256, "k", false)
		if err != nil {
			t.Fatal(err)
		}
		return &setup{f: f, p: p, shares: shares, key: k.ID}
	}
	for _, tc := range tests {
		t.Run(tc.event+"/recorded first", func(t *testing.T) {
			s := prepare(t)
			head, err := s.f.m.Audit().Head()
			if err != nil {
				t.Fatal(err)
			}
			var seen *hsm.AuditEvent
			s.f.m.commitFault = func(tx *bolt.Tx, event string) error {
				if event == tc.event {
					seen = lastAuditRecord(t, tx)
				}
				return nil
			}
			if err := tc.do(s); err != nil {
				t.Fatal(err)
			}
			if seen == nil || seen.Type != tc.event || seen.Seq <= head.Count {
				t.Fatalf("when the %s change was committed, the last audit record was %+v (before it: %d records)", tc.event, seen, head.Count)
			}
		})
		t.Run(tc.event+"/commit fails", func(t *testing.T) {
			s := prepare(t)
			injected := errors.New("injected commit failure")
			s.f.m.commitFault = func(tx *bolt.Tx, event string) error {
				if event == tc.event {
					return injected
				}
				return nil
			}
			if err := tc.do(s); !errors.Is(err, injected) {
				t.Fatalf("%s with a failing commit: %v", tc.event, err)
			}
			s.f.m.commitFault = nil
			evs, err := s.f.m.Audit().Events(0, 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(evs) < 2 {
				t.Fatalf("%d audit records", len(evs))
			}
			rec, failed := evs[len(evs)-2], evs[len(evs)-1]
			if rec.Type != tc.event || failed.Type != "commit-failed" ||
				failed.Fields["event"] != tc.event || failed.Fields["seq"] != fmt.Sprint(rec.Seq) {
				t.Fatalf("last audit records:\n%+v\n%+v", rec, failed)
			}
			tc.unchanged(t, s)
			if _, err := s.f.m.Audit().Verify(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// lastAuditRecord decodes the newest record of the audit bucket as seen by
// tx.
func lastAuditRecord(t *testing.T, tx *bolt.Tx) *hsm.AuditEvent {
	t.Helper()
	_, v := tx.Bucket([]byte("audit")).Cursor().Last()
	var ev hsm.AuditEvent
	if err := json.Unmarshal(v, &ev); err != nil {
		t.Fatalf("last audit record: %v", err)
	}
	return &ev
}

// keyRecordBytes reads one stored key record from a closed module file.
func keyRecordBytes(t *testing.T, path, id string) []byte {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	return keyRecordBytesTx(t, db, id)
}

func keyRecordBytesTx(t *testing.T, db *bolt.DB, id string) []byte {
	t.Helper()
	var rec []byte
	db.View(func(tx *bolt.Tx) error {
		rec = bytes.Clone(tx.Bucket(keysBucket).Get([]byte(id)))
		return nil
	})
	if rec == nil {
		t.Fatalf("no record for key %s", id)
	}
	return rec
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// A per-operation partition's last signature, taken while a re-share's
// Commit is between its first check and its transaction (here: while the
// reshare audit record is appended), seals the partition without opMu.
// Commit must then fail and leave the sealed partition without a master
// key, at its current generation.
func TestReshareCommitRacesPerOperationAutoSeal(t *testing.T) {
	var hook atomic.Pointer[func()]
	base := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	clock := func() time.Time {
		if h := hook.Swap(nil); h != nil {
			(*h)()
		}
		return base
	}
	m, err := Open(filepath.Join(t.TempDir(), "module"), Options{Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	shares, err := m.InitPartition(hsm.InitOptions{Partition: "root", Shares: 1, Threshold: 1, Policy: hsm.PolicyPerOperation})
	if err != nil {
		t.Fatal(err)
	}
	hp, err := m.Partition("root")
	if err != nil {
		t.Fatal(err)
	}
	p := hp.(*Partition)
	activate(t, p, shares)
	k, err := p.GenerateKey(hsm.ECDSAP256, "k", false)
	if err != nil {
		t.Fatal(err)
	}
	s, err := p.Signer(k.ID)
	if err != nil {
		t.Fatal(err)
	}
	pr, err := p.PrepareReshare(1, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Discard()
	signed := false
	var signErr error
	h := func() { signed, signErr = true, signVerify(t, s) } // spends the only signature
	hook.Store(&h)
	cerr := pr.Commit()
	if !signed || signErr != nil {
		t.Fatalf("signature in the window: taken %v, %v", signed, signErr)
	}
	if !errors.Is(cerr, hsm.ErrSealed) {
		t.Errorf("Commit on a partition that sealed itself meanwhile: %v, want ErrSealed", cerr)
	}
	st, _ := p.Status()
	p.mu.Lock()
	master, active := p.master, p.active
	p.mu.Unlock()
	if active || master != nil || st.State != hsm.StateSealed || st.Generation != 1 {
		t.Errorf("after Commit: active %v, master in memory %v, %+v", active, master != nil, st)
	}
	activate(t, p, shares) // the current share still works
	evs, err := m.Audit().Events(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var failed bool
	for _, ev := range evs {
		failed = failed || ev.Type == "commit-failed" && ev.Fields["event"] == "reshare"
	}
	if !failed {
		t.Error("no commit-failed record follows the reshare record")
	}
}

// A bbolt commit whose sync fails has written its meta page already: the
// change may be in force although the transaction returned an error.
// Commit then reports hsm.ErrReshareIncomplete (the caller keeps both
// share sets), records result=incomplete rather than a plain
// commit-failed, and the partition holds what the database shows: the new
// generation and master key, so a key stored next is wrapped under it.
func TestReshareCommitErrorWithChangeVisible(t *testing.T) {
	f := newFixture(t)
	old := f.init(t, "issuing", 2, 2, hsm.PolicyOnline)
	p := f.part(t, "issuing")
	activate(t, p, old)
	k1, err := p.GenerateKey(hsm.ECDSAP256, "k1", false)
	if err != nil {
		t.Fatal(err)
	}
	lost := errors.New("injected: fdatasync failed")
	f.m.commitLost = func(event string) error {
		if event == "reshare" {
			return lost
		}
		return nil
	}
	pr, err := p.(hsm.StagedResharer).PrepareReshare(3, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Discard()
	fresh := pr.Shares()
	err = pr.Commit()
	f.m.commitLost = nil
	if !errors.Is(err, hsm.ErrReshareIncomplete) || !errors.Is(err, lost) {
		t.Fatalf("Commit with the change visible: %v, want ErrReshareIncomplete", err)
	}
	if st, _ := p.Status(); st.Generation != 2 || st.State != hsm.StateActive {
		t.Fatalf("status after the incomplete commit: %+v", st)
	}
	evs, err := f.m.Audit().Events(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	last := evs[len(evs)-1]
	if last.Type != "commit-failed" || last.Fields["event"] != "reshare" || last.Fields["result"] != "incomplete" {
		t.Fatalf("last audit record: %+v", last)
	}
	k2, err := p.GenerateKey(hsm.ECDSAP256, "k2", false)
	if err != nil {
		t.Fatal(err)
	}
	f.reopen(t)
	p = f.part(t, "issuing")
	if _, err := p.AddShare(old[0]); err == nil {
		t.Fatal("a share of the previous generation was accepted")
	}
	activate(t, p, fresh[1:])
	for _, id := range []string{k1.ID, k2.ID} {
		s, err := p.Signer(id)
		if err != nil {
			t.Fatal(err)
		}
		if err := signVerify(t, s); err != nil {
			t.Fatalf("key %s after the incomplete re-share: %v", id, err)
		}
	}
	if _, err := f.m.Audit().Verify(); err != nil {
		t.Fatal(err)
	}
}
