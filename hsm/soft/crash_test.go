package soft

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hsmca/hsmca/hsm"
)

// kill9ChildEnv makes TestKill9Child the signing child process of
// TestKill9KeepsAcknowledgedSignatures; it holds "MODULE-DIR|SHARE-FILE".
const kill9ChildEnv = "HSMCA_SOFT_KILL9_CHILD"

// TestKill9KeepsAcknowledgedSignatures runs a child process (this test
// binary) that signs from several goroutines and prints the digest of each
// signature it got back, kills it with SIGKILL while it signs, and checks
// that every printed digest has its audit record and that the log
// verifies.
func TestKill9KeepsAcknowledgedSignatures(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a child process")
	}
	work := t.TempDir()
	dir := filepath.Join(work, "module")
	m, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	shares, err := m.InitPartition(hsm.InitOptions{Partition: "issuing", Shares: 1, Threshold: 1, Policy: hsm.PolicyOnline})
	if err != nil {
		t.Fatal(err)
	}
	p, _ := m.Partition("issuing")
	activate(t, p, shares)
	if _, err := p.GenerateKey(hsm.ECDSAP256, "k", false); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	shareFile := filepath.Join(work, "share.txt")
	if err := os.WriteFile(shareFile, []byte(hsm.EncodeText(shares[0])), 0o600); err != nil {
		t.Fatal(err)
	}

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestKill9Child$", "-test.count=1")
	cmd.Env = append(os.Environ(), kill9ChildEnv+"="+dir+"|"+shareFile)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Read until enough signatures are acknowledged, kill, then read what
	// the child printed before it died.
	const want = 300
	lines := make(chan string, 1024)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var printed []string
	deadline := time.After(2 * time.Minute)
	killed := false
	for line := range lines {
		if d, ok := strings.CutPrefix(line, "signed "); ok {
			printed = append(printed, d)
		}
		if !killed && len(printed) >= want {
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
		select {
		case <-deadline:
			if !killed {
				cmd.Process.Signal(syscall.SIGKILL)
				t.Fatalf("child printed %d signatures in 2 minutes; stderr:\n%s", len(printed), stderr.String())
			}
		default:
		}
	}
	err = cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || !exit.Sys().(syscall.WaitStatus).Signaled() {
		t.Fatalf("child was not killed by the signal (%v, %d signatures); stderr:\n%s", err, len(printed), stderr.String())
	}

	m, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.Audit().Verify(); err != nil {
		// A kill during a write(2) that spans two pages can tear the
		// last record (its signature was never returned); recovery
		// records that and the log verifies again.
		var aerr *hsm.AuditError
		if !errors.As(err, &aerr) || !strings.Contains(aerr.Reason, "torn") {
			t.Fatalf("verify after kill -9: %v", err)
		}
		if err := m.log.Recover(); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Audit().Verify(); err != nil {
			t.Fatalf("verify after recovery: %v", err)
		}
	}
	evs, err := m.Audit().Events(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	recorded := map[string]bool{}
	for _, ev := range evs {
		if ev.Type == "sign" {
			recorded[ev.Fields["digest"]] = true
		}
	}
	for _, d := range printed {
		if !recorded[d] {
			t.Fatalf("signature over %s was handed out but has no audit record (%d printed, %d recorded)", d, len(printed), len(recorded))
		}
	}
	t.Logf("%d acknowledged signatures, %d signature records after kill -9", len(printed), len(recorded))
}

// TestKill9Child is the child of TestKill9KeepsAcknowledgedSignatures.
func TestKill9Child(t *testing.T) {
	arg := os.Getenv(kill9ChildEnv)
	if arg == "" {
		t.Skip("child process of TestKill9KeepsAcknowledgedSignatures")
	}
	dir, shareFile, _ := strings.Cut(arg, "|")
	m, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	text, err := os.ReadFile(shareFile)
	if err != nil {
		t.Fatal(err)
	}
	share, err := hsm.DecodeText(string(text))
	if err != nil {
		t.Fatal(err)
	}
	p, err := m.Partition("issuing")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.AddShare(share); err != nil {
		t.Fatal(err)
	}
	s, err := p.Signer("k")
	if err != nil {
		t.Fatal(err)
	}
	// Sign until killed; bounded in count and time in case nobody does.
	stop := time.Now().Add(2 * time.Minute)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200_000 && time.Now().Before(stop); i++ {
				digest := sha256.Sum256(fmt.Appendf(nil, "%d/%d", w, i))
				if _, err := s.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
					fmt.Fprintf(os.Stderr, "sign: %v\n", err)
					return
				}
				// One write(2) per line, after Sign returned: the
				// signature is acknowledged.
				os.Stdout.WriteString("signed " + hex.EncodeToString(digest[:]) + "\n")
			}
		}()
	}
	wg.Wait()
}
