package cli

import (
	"os"
	"path/filepath"
	"testing"
)

// fullDir mounts a 64 KiB tmpfs at a new directory and fills it (root
// only; the test is skipped otherwise).
func fullDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "full")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	mountTmpfs(t, dir, "size=64k")
	if err := os.WriteFile(filepath.Join(dir, "fill"), make([]byte, 128<<10), 0o600); err == nil {
		t.Fatal("the fill file fitted; the file system is not full")
	}
	return dir
}

// TestPrepareOutDirRefusesFullFileSystem: a full file system still takes
// an empty file, so the check before the module changes must write some
// data; otherwise hsm init would create a partition and then write none
// of its shares.
func TestPrepareOutDirRefusesFullFileSystem(t *testing.T) {
	dir := fullDir(t)
	if _, err := prepareOutDir(dir, []string{"share-1.txt"}); err == nil {
		t.Fatal("prepareOutDir accepted a full directory")
	}
	if err := checkNewFile(filepath.Join(dir, "out.pem")); err == nil {
		t.Fatal("checkNewFile accepted a file in a full directory")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("the checks left files behind: %v", entries)
	}
}
