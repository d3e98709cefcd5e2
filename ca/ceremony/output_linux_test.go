package ceremony

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A ceremony whose output directory takes no new files is refused before
// the module is used.
func TestUnwritableOutputDirectoryRefusedFirst(t *testing.T) {
	dir := inDir(t, map[string]string{"root.yaml": strings.Replace(rootYAML, "outputs: {certificate: root.pem}", "outputs: {certificate: out/root.pem}", 1)})
	readOnlyDir(t, filepath.Join(dir, "out"))
	keys := newMemKeys("root")
	if _, err := run(t, keys, "root.yaml"); err == nil || !strings.Contains(err.Error(), "cannot write output") {
		t.Fatalf("got %v, want a refusal naming the output", err)
	}
	if len(keys.partitions["root"].keys) != 0 || keys.signatures != 0 {
		t.Fatal("the module was used")
	}
}

// readOnlyDir makes dir, a directory no file can be created in: mode 0500,
// or for root (whom modes do not stop) a read-only tmpfs; it skips the
// test where it can do neither.
func readOnlyDir(t *testing.T, dir string) {
	t.Helper()
	if err := os.Mkdir(dir, 0o500); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		return
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("mount a read-only tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
}
