//go:build cgo

package cli

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// TestHSMEndToEndPKCS11 runs the custodian's script (runHSMEndToEnd) on the
// pkcs11 backend, against SoftHSM2 tokens this test creates in a temporary
// token directory: one fresh token per partition, whose user PIN the
// `hsm init --pin-file` replaces.
func TestHSMEndToEndPKCS11(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: builds and runs the hsmca binary")
	}
	lib := softHSMForE2E(t)
	base := t.TempDir()
	tokdir := filepath.Join(base, "tokens")
	if err := os.MkdirAll(tokdir, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(base, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+tokdir+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The hsmca processes the script runs inherit this.
	t.Setenv("SOFTHSM2_CONF", conf)
	pinFile := filepath.Join(base, "user.pin")
	if err := os.WriteFile(pinFile, []byte("87654321\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	tokens := map[string]string{} // module+partition → token label
	initFlags := func(t *testing.T, module, partition string) []string {
		mu.Lock()
		defer mu.Unlock()
		key := module + "\x00" + partition
		label, ok := tokens[key]
		if !ok {
			label = fmt.Sprintf("e2e-%d", len(tokens))
			out, err := exec.Command("softhsm2-util", "--init-token", "--free", "--label", label,
				"--so-pin", "12345678", "--pin", "87654321").CombinedOutput()
			if err != nil {
				t.Fatalf("softhsm2-util --init-token: %v\n%s", err, out)
			}
			tokens[key] = label
		}
		return []string{"--backend", "pkcs11", "--token-uri", "pkcs11:token=" + label + "?module-path=" + lib, "--pin-file", pinFile}
	}
	runHSMEndToEnd(t, e2eBackend{
		name:         "pkcs11",
		initFlags:    initFlags,
		keyTypes:     []string{"ecdsa-p256", "ecdsa-p384", "rsa-2048"},
		tamperAudit:  tamperBoltAudit,
		auditTampers: boltAuditTampers,
	})
}

// softHSMForE2E returns the SoftHSM2 library path, skipping the test when
// SoftHSM2 is not installed (failing instead when $CI is set).
func softHSMForE2E(t *testing.T) string {
	t.Helper()
	fail := func(msg string) {
		if os.Getenv("CI") != "" {
			t.Fatal(msg + " (CI is set)")
		}
		t.Skip(msg)
	}
	if _, err := exec.LookPath("softhsm2-util"); err != nil {
		fail("softhsm2-util not found; install SoftHSM2 (make deps)")
	}
	for _, p := range []string{
		"/usr/lib/softhsm/libsofthsm2.so",
		"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
		"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
		"/usr/local/lib/softhsm/libsofthsm2.so",
	} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	fail("libsofthsm2.so not found; install SoftHSM2 (make deps)")
	return ""
}
