package ceremony

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// withoutHardLinks makes linkFile fail as it does on vfat and exFAT (the
// USB sticks outputs are often written to) for the rest of the test.
func withoutHardLinks(t *testing.T) {
	t.Helper()
	prev := linkFile
	linkFile = func(oldname, newname string) error {
		return &os.LinkError{Op: "link", Old: oldname, New: newname, Err: syscall.EPERM}
	}
	t.Cleanup(func() { linkFile = prev })
}

// On a file system without hard links a ceremony still writes its
// outputs, complete and without temporary files left, and still refuses
// to overwrite one that appeared while it ran, removing the others.
func TestOutputsWithoutHardLinks(t *testing.T) {
	both := strings.Replace(rootYAML, "outputs: {certificate: root.pem}", "outputs: {certificate: root.pem, public_key: root.pub.pem}", 1)
	t.Run("success", func(t *testing.T) {
		withoutHardLinks(t)
		dir := inDir(t, map[string]string{"root.yaml": both})
		mustRun(t, newMemKeys("root"), "root.yaml")
		data, err := os.ReadFile(filepath.Join(dir, "root.pem"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := pem.Decode(data)
		if b == nil || b.Type != "CERTIFICATE" {
			t.Fatalf("root.pem: %q", data)
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(filepath.Join(dir, "root.pub.pem")); !strings.Contains(string(b), "PUBLIC KEY") {
			t.Fatalf("root.pub.pem: %q", b)
		}
		assertNoTempFiles(t, dir)
	})
	t.Run("an output appears while the module signs", func(t *testing.T) {
		withoutHardLinks(t)
		dir := inDir(t, map[string]string{"root.yaml": both})
		keys := newMemKeys("root")
		keys.onSign = func() {
			if err := os.WriteFile(filepath.Join(dir, "root.pub.pem"), []byte("someone else's"), 0o644); err != nil {
				t.Error(err)
			}
		}
		_, err := run(t, keys, "root.yaml")
		if err == nil || !strings.Contains(err.Error(), "root.pub.pem appeared while the ceremony ran") {
			t.Fatalf("got %v, want a refusal to overwrite", err)
		}
		if _, err := os.Stat("root.pem"); !errors.Is(err, os.ErrNotExist) {
			t.Fatal("root.pem left behind by a ceremony that failed to write all its outputs")
		}
		if b, _ := os.ReadFile("root.pub.pem"); string(b) != "someone else's" {
			t.Fatal("the file that appeared was overwritten")
		}
		assertNoTempFiles(t, dir)
	})
}
