package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestHSMInitPKCS11NoCgo builds hsmca with CGO_ENABLED=0 and checks that
// `hsm init --backend pkcs11` says clearly that PKCS#11 is not compiled in.
func TestHSMInitPKCS11NoCgo(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the hsmca binary")
	}
	bin := filepath.Join(t.TempDir(), "hsmca-nocgo")
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goTool); err != nil {
		goTool = "go"
	}
	cmd := exec.Command(goTool, "build", "-o", bin, "github.com/hsmca/hsmca/cmd/hsmca")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build: %v\n%s", err, out)
	}
	work := t.TempDir()
	pin := filepath.Join(work, "pin")
	if err := os.WriteFile(pin, []byte("1234\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	run := exec.Command(bin, "hsm", "init", "--module", filepath.Join(work, "module"), "--partition", "issuing",
		"--shares", "3", "--threshold", "2", "--out", filepath.Join(work, "shares"),
		"--backend", "pkcs11", "--token-uri", "pkcs11:token=t?module-path=/usr/lib/softhsm/libsofthsm2.so", "--pin-file", pin)
	out, err := run.CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 1 {
		t.Fatalf("want exit 1, got %v:\n%s", err, out)
	}
	for _, want := range []string{"hsmca: error:", "PKCS#11 support is not compiled in", "CGO_ENABLED=0", "hint:", "--backend soft"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(work, "shares")); len(entries) > 0 {
		t.Errorf("a refused init wrote shares: %v", entries)
	}
}
