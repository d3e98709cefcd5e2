package soft

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/hsmca/hsmca/hsm"
)

// fileState is what a read-only open must leave as it was: each file's
// name, bytes and modification time.
type fileState struct {
	name  string
	data  []byte
	mtime time.Time
}

// backdate sets the modification time of every file in dir to one long
// past, so that a write, whatever the file system's time resolution,
// changes it.
func backdate(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	past := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	for _, e := range ents {
		if err := os.Chtimes(filepath.Join(dir, e.Name()), past, past); err != nil {
			t.Fatal(err)
		}
	}
}

func dirState(t *testing.T, dir string) []fileState {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []fileState
	for _, e := range ents {
		path := filepath.Join(dir, e.Name())
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, fileState{e.Name(), data, st.ModTime()})
	}
	return out
}

func sameDirState(t *testing.T, before, after []fileState) {
	t.Helper()
	if !slices.EqualFunc(before, after, func(a, b fileState) bool {
		return a.name == b.name && bytes.Equal(a.data, b.data) && a.mtime.Equal(b.mtime)
	}) {
		for _, s := range [][]fileState{before, after} {
			for _, f := range s {
				t.Logf("%s: %d bytes, mtime %s", f.name, len(f.data), f.mtime.Format(time.RFC3339Nano))
			}
		}
		t.Error("the read-only open changed the module directory (before, then after, above)")
	}
}

// readOnlyModule makes a module whose log has records in the database and
// in the segment (an activation and a signature) and closes it.
func readOnlyModule(t *testing.T) (dir string, head hsm.AuditHead) {
	t.Helper()
	f := newFixture(t)
	shares := f.init(t, "issuing", 1, 1, hsm.PolicyOnline)
	p := f.part(t, "issuing")
	activate(t, p, shares)
	k, err := p.GenerateKey(hsm.ECDSAP256, "k", false)
	if err != nil {
		t.Fatal(err)
	}
	s, err := p.Signer(k.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := signVerify(t, s); err != nil {
		t.Fatal(err)
	}
	// Sealed now, Close records nothing more.
	if err := p.Seal(); err != nil {
		t.Fatal(err)
	}
	if head, err = f.m.Audit().Head(); err != nil {
		t.Fatal(err)
	}
	if err := f.m.Close(); err != nil {
		t.Fatal(err)
	}
	return f.dir, head
}

// verifyReadOnly opens dir read-only, reads and verifies its log, checks
// that every change is refused, and closes it.
func verifyReadOnly(t *testing.T, dir string, want hsm.AuditHead) {
	t.Helper()
	m, err := Open(dir, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	}()
	head, err := m.Audit().Verify()
	if err != nil || head != want {
		t.Errorf("Verify: %+v, %v; want %+v", head, err, want)
	}
	ext, ok := m.Audit().(interface {
		VerifyExtends(...hsm.AuditHead) (hsm.AuditHead, error)
	})
	if !ok {
		t.Error("the read-only audit log cannot check known heads")
	} else if _, err := ext.VerifyExtends(want); err != nil {
		t.Errorf("VerifyExtends: %v", err)
	}
	evs, err := m.Audit().Events(1, 0)
	if err != nil || uint64(len(evs)) != want.Count || !slices.ContainsFunc(evs, func(ev hsm.AuditEvent) bool { return ev.Type == "sign" }) {
		t.Errorf("Events: %d records, %v; want %d with a signature", len(evs), err, want.Count)
	}
	if h, err := m.Audit().Head(); err != nil || h != want {
		t.Errorf("Head: %+v, %v; want %+v", h, err, want)
	}
	if names, err := m.Partitions(); err != nil || !slices.Equal(names, []string{"issuing"}) {
		t.Errorf("Partitions: %v, %v", names, err)
	}
	if _, ok := m.Audit().(interface {
		Append(string, string, map[string]string) (hsm.AuditEvent, error)
	}); ok {
		t.Error("the read-only audit log offers Append")
	}
	if _, err := m.InitPartition(hsm.InitOptions{Partition: "more", Shares: 1, Threshold: 1}); !errors.Is(err, ErrReadOnly) {
		t.Errorf("InitPartition: %v, want ErrReadOnly", err)
	}
	if _, err := m.Partition("issuing"); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Partition: %v, want ErrReadOnly", err)
	}
}

// A read-only open (hsm audit verify and list) of a module, say an
// auditor's copy, changes nothing in its directory: not module.db (a
// writable open writes the running time at Close), not audit.seg, and it
// creates no file.
func TestReadOnlyOpenChangesNothing(t *testing.T) {
	dir, head := readOnlyModule(t)
	backdate(t, dir)
	before := dirState(t, dir)
	if names := []string{before[0].name, before[len(before)-1].name}; len(before) != 2 || names[0] != AuditFileName || names[1] != FileName {
		t.Fatalf("module files: %v, want %s and %s", names, AuditFileName, FileName)
	}
	verifyReadOnly(t, dir, head)
	sameDirState(t, before, dirState(t, dir))
}

// The auditor's copy may be on read-only media.
func TestReadOnlyOpenOnReadOnlyDirectory(t *testing.T) {
	dir, head := readOnlyModule(t)
	backdate(t, dir)
	before := dirState(t, dir)
	ro := readOnlyDir(t, dir)
	if err := os.WriteFile(filepath.Join(ro, "probe"), nil, 0o600); err == nil {
		t.Fatalf("%s is writable; the test cannot make it read-only", ro)
	}
	verifyReadOnly(t, ro, head)
	sameDirState(t, before, dirState(t, dir))
}

// A read-only open creates nothing where there is no module.
func TestReadOnlyOpenNeedsAModule(t *testing.T) {
	parent := t.TempDir()
	for _, dir := range []string{filepath.Join(parent, "absent"), parent} {
		if _, err := Open(dir, Options{ReadOnly: true}); err == nil {
			t.Errorf("read-only open of %s without a module succeeded", dir)
		}
	}
	if ents, err := os.ReadDir(parent); err != nil || len(ents) != 0 {
		t.Errorf("read-only opens left %v, %v", ents, err)
	}
}

// bbolt's read-only open takes a shared lock: while a process has the
// module open, a read-only open fails as a writable one does, and a
// reader keeps a writer out until it closes.
func TestReadOnlyOpenWhileInUse(t *testing.T) {
	dir, _ := readOnlyModule(t)
	m, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{ReadOnly: true, LockTimeout: 50 * time.Millisecond}); !errors.Is(err, hsm.ErrModuleInUse) {
		t.Errorf("read-only open of a module in use: %v, want ErrModuleInUse", err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := Open(dir, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := Open(dir, Options{LockTimeout: 50 * time.Millisecond}); !errors.Is(err, hsm.ErrModuleInUse) {
		t.Errorf("writable open while a reader has the module: %v, want ErrModuleInUse", err)
	}
}
