//go:build !linux

package soft

import (
	"os"
	"testing"
)

// readOnlyDir returns dir with mode 0555; it skips the test as root, for
// whom that does not stop writes.
func readOnlyDir(t *testing.T, dir string) string {
	t.Helper()
	if os.Geteuid() == 0 {
		t.Skip("running as root: a directory's mode does not stop writes")
	}
	if err := os.Chmod(dir, 0o555); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(dir, 0o700) })
	return dir
}
