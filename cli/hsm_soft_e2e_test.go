package cli

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/hsmca/hsmca/hsm"
)

// TestHSMEndToEndSoft runs the custodian's script on the soft backend.
func TestHSMEndToEndSoft(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: builds and runs the hsmca binary")
	}
	runHSMEndToEnd(t, e2eBackend{
		name:           "soft",
		initFlags:      func(*testing.T, string, string) []string { return nil },
		keyTypes:       []string{"ecdsa-p256", "ecdsa-p384", "rsa-2048", "ed25519"},
		exportableKeys: true,
		auditTampers:   boltAuditTampers,
	})
}

// The audit tampers edit the module's bbolt file directly, as an attacker
// with write access to the module directory could: editBoltAudit opens every
// bbolt file in the directory and hands the first bucket whose name is
// "audit" (the records, one per sequence number, in order) to edit.
func editBoltAudit(t *testing.T, module string, edit func(b *bolt.Bucket) error) {
	t.Helper()
	entries, err := os.ReadDir(module)
	if err != nil {
		t.Fatal(err)
	}
	for _, ent := range entries {
		if !ent.Type().IsRegular() {
			continue
		}
		path := filepath.Join(module, ent.Name())
		db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
		if err != nil {
			continue // not a bbolt file
		}
		found := false
		err = db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket([]byte("audit"))
			if b == nil {
				return nil
			}
			found = true
			return edit(b)
		})
		db.Close()
		if err != nil {
			t.Fatalf("tamper %s: %v", path, err)
		}
		if found {
			return
		}
	}
	t.Fatalf("no audit bucket in the bbolt files of %s", module)
}

// nthRecord returns the key and value of the n-th record (1-based) of b, or
// of the last one when n is 0.
func nthRecord(b *bolt.Bucket, n int) (k, v []byte, err error) {
	c := b.Cursor()
	if n == 0 {
		k, v = c.Last()
	} else {
		k, v = c.First()
		for i := 1; i < n && k != nil; i++ {
			k, v = c.Next()
		}
	}
	if k == nil {
		return nil, nil, errors.New("audit bucket has too few records")
	}
	return append([]byte(nil), k...), append([]byte(nil), v...), nil
}

// tamperBoltAudit changes one character of the third audit record; the
// record stays well-formed JSON, so only the hash chain can tell.
func tamperBoltAudit(t *testing.T, module string) {
	t.Helper()
	editBoltAudit(t, module, func(b *bolt.Bucket) error {
		k, v, err := nthRecord(b, 3)
		if err != nil {
			return err
		}
		i := bytes.Index(v, []byte(`"type":"`))
		if i < 0 {
			return errors.New("record has no type field")
		}
		v[i+len(`"type":"`)] ^= 0x01 // still a letter: a different event type
		return b.Put(k, v)
	})
}

// boltAuditTampers change, delete and truncate records of an audit log kept
// in a bbolt file in the module directory.
var boltAuditTampers = map[string]func(t *testing.T, module string){
	"change a record": tamperBoltAudit,
	"change the last record": func(t *testing.T, module string) {
		editBoltAudit(t, module, func(b *bolt.Bucket) error {
			k, v, err := nthRecord(b, 0)
			if err != nil {
				return err
			}
			i := bytes.Index(v, []byte(`"type":"`))
			if i < 0 {
				return errors.New("record has no type field")
			}
			v[i+len(`"type":"`)] ^= 0x01
			return b.Put(k, v)
		})
	},
	"delete a record": func(t *testing.T, module string) {
		editBoltAudit(t, module, func(b *bolt.Bucket) error {
			k, _, err := nthRecord(b, 2)
			if err != nil {
				return err
			}
			return b.Delete(k)
		})
	},
	"truncate the log": func(t *testing.T, module string) {
		editBoltAudit(t, module, func(b *bolt.Bucket) error {
			k, _, err := nthRecord(b, 0)
			if err != nil {
				return err
			}
			return b.Delete(k)
		})
	},
}

// TestHSMModuleInUse: a module held by another process is refused at once
// with a hint, not a hang.
func TestHSMModuleInUse(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: builds and runs the hsmca binary")
	}
	work := t.TempDir()
	mod := filepath.Join(work, "module")
	mustRun(t, work, "hsm", "init", "--module", mod, "--partition", "issuing", "--shares", "1", "--threshold", "1", "--out", filepath.Join(work, "shares"))
	m, err := openModule(mod)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	r := mustFail(t, work, 1, []string{"hint:"}, "hsm", "status", "--module", mod)
	if !strings.Contains(r.stderr, strings.TrimPrefix(hsm.ErrModuleInUse.Error(), "hsm: ")) {
		t.Errorf("want the in-use error:\n%s", r)
	}
}
