package cli

import (
	"maps"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// The auditor's copy may be on read-only media: verify and list work on a
// read-only directory (as root, for whom permissions do not stop writes,
// a read-only bind mount; otherwise mode 0555).
func TestHSMAuditReadOnlyDirectory(t *testing.T) {
	work, mod, share := auditTestModule(t)
	mustRun(t, work, "hsm", "activate", "--module", mod, "--share", share)
	known := statusHead(t, work, mod)
	before := moduleFiles(t, mod, true)
	ro := mod
	if os.Geteuid() != 0 {
		if err := os.Chmod(mod, 0o555); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(mod, 0o700) })
	} else {
		ro = filepath.Join(work, "ro")
		if err := os.Mkdir(ro, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Mount(mod, ro, "", syscall.MS_BIND, ""); err != nil {
			t.Skipf("running as root, and a bind mount fails: %v", err)
		}
		t.Cleanup(func() {
			if err := syscall.Unmount(ro, 0); err != nil {
				t.Errorf("unmount %s: %v", ro, err)
			}
		})
		if err := syscall.Mount("", ro, "", syscall.MS_REMOUNT|syscall.MS_BIND|syscall.MS_RDONLY, ""); err != nil {
			t.Skipf("running as root, and a read-only remount fails: %v", err)
		}
	}
	if err := os.WriteFile(filepath.Join(ro, "probe"), nil, 0o600); err == nil {
		t.Fatalf("%s is writable; the test cannot make it read-only", ro)
	}
	for _, args := range auditReadCommands(ro, known) {
		mustRun(t, work, args...)
	}
	if after := moduleFiles(t, mod, false); !maps.Equal(before, after) {
		t.Fatalf("the audit commands changed the module:\nbefore %v\nafter  %v", before, after)
	}
}
