package cli

import (
	"bytes"
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
		name:        "soft",
		initFlags:   func(*testing.T, string, string) []string { return nil },
		keyTypes:    []string{"ecdsa-p256", "ecdsa-p384", "rsa-2048", "ed25519"},
		tamperAudit: tamperBoltAudit,
	})
}

// tamperBoltAudit alters one audit record the way an attacker with write
// access to the module directory would: it opens every bbolt file in the
// module directory, finds the bucket whose name contains "audit" (at any
// depth), and changes one character of the second record's value. The
// record stays well-formed where it can (a letter becomes another letter),
// so that only the hash chain can tell.
func tamperBoltAudit(t *testing.T, module string) {
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
		done := false
		err = db.Update(func(tx *bolt.Tx) error {
			return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
				if !done {
					done = tamperBucket(name, b)
				}
				return nil
			})
		})
		db.Close()
		if err != nil {
			t.Fatalf("tamper %s: %v", path, err)
		}
		if done {
			return
		}
	}
	t.Fatalf("no audit bucket found in the bbolt files of %s", module)
}

// tamperBucket changes the second value of the first bucket (this one or
// nested) named like "audit" and reports whether it did.
func tamperBucket(name []byte, b *bolt.Bucket) bool {
	if bytes.Contains(bytes.ToLower(name), []byte("audit")) {
		c := b.Cursor()
		n := 0
		for k, v := c.First(); k != nil && n < 10000; k, v = c.Next() {
			if v == nil {
				continue // nested bucket
			}
			n++
			if n < 2 {
				continue
			}
			nv := append([]byte(nil), v...)
			changed := false
			// Prefer a lower-case letter inside a JSON string value.
			for i := len(nv) / 2; i < len(nv) && !changed; i++ {
				if nv[i] >= 'a' && nv[i] <= 'y' {
					nv[i]++
					changed = true
				}
			}
			for i := 0; i < len(nv) && !changed; i++ {
				nv[i] ^= 0x01
				changed = true
			}
			return changed && b.Put(append([]byte(nil), k...), nv) == nil
		}
	}
	done := false
	_ = b.ForEachBucket(func(k []byte) error {
		if !done {
			done = tamperBucket(k, b.Bucket(k))
		}
		return nil
	})
	return done
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
