package cttest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TesseraCT is a running TesseraCT POSIX log (a real static-ct-api log
// nobody here wrote) on 127.0.0.1, installed by `make deps` into
// bin/peers/posix.
type TesseraCT struct {
	URL     string            // submission prefix (add-pre-chain is under it)
	Origin  string            // checkpoint origin line
	Key     *ecdsa.PrivateKey // the log's key
	Storage string            // --storage_dir; the checkpoint file is in it

	cmd *exec.Cmd
	out *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TesseraCTBinary returns the path of bin/peers/posix in the module root
// above the working directory. When it is missing the test is skipped with
// a message, or fails when the environment variable CI is "true".
func TesseraCTBinary(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		dir = filepath.Dir(dir)
	}
	bin := filepath.Join(dir, "bin", "peers", "posix")
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("TesseraCT binary %s missing: run make deps", bin)
		}
		t.Skipf("TesseraCT binary %s missing: run make deps (scripts/deps.sh installs it)", bin)
	}
	return bin
}

// StartTesseraCT runs TesseraCT accepting chains to roots, with a fresh
// ECDSA P-256 key and storage directory, and stops it at t's cleanup. It
// picks a free port, retrying if another process takes it first. Its
// checkpoint interval is 500ms (the binary's default is 1.5s).
func StartTesseraCT(t testing.TB, roots ...*x509.Certificate) *TesseraCT {
	t.Helper()
	bin := TesseraCTBinary(t)
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(dir, "log-key.pem")
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	var rootsPEM []byte
	for _, r := range roots {
		rootsPEM = append(rootsPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	rootsPath := filepath.Join(dir, "roots.pem")
	if err := os.WriteFile(rootsPath, rootsPEM, 0o644); err != nil {
		t.Fatal(err)
	}

	var lastErr error
	for try := 0; try < 3; try++ {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		ts := &TesseraCT{
			URL:     "http://127.0.0.1:" + port + "/hsmca-test",
			Origin:  "127.0.0.1/hsmca-test",
			Key:     key,
			Storage: filepath.Join(dir, fmt.Sprintf("storage-%d", try)),
			out:     &lockedBuffer{},
		}
		ts.cmd = exec.Command(bin,
			"--http_endpoint=127.0.0.1:"+port,
			"--storage_dir="+ts.Storage,
			"--origin="+ts.Origin,
			"--path_prefix=/hsmca-test",
			"--private_key="+keyPath,
			"--roots_pem_file="+rootsPath,
			"--accept_sha1_signing_algorithms=false",
			"--checkpoint_interval=500ms",
		)
		ts.cmd.Stdout, ts.cmd.Stderr = ts.out, ts.out
		if err := ts.cmd.Start(); err != nil {
			t.Fatalf("start TesseraCT: %v", err)
		}
		exited := make(chan error, 1)
		go func() { exited <- ts.cmd.Wait() }()
		if lastErr = ts.waitReady(exited); lastErr == nil {
			t.Cleanup(func() { ts.stop(t, exited) })
			return ts
		}
		ts.cmd.Process.Kill()
		<-exited
	}
	t.Fatalf("TesseraCT did not start: %v", lastErr)
	return nil
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port), nil
}

// waitReady polls get-roots until the log answers, the process exits or
// 30 seconds pass.
func (ts *TesseraCT) waitReady(exited chan error) error {
	deadline := time.Now().Add(30 * time.Second)
	hc := &http.Client{Timeout: 2 * time.Second}
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			exited <- err
			return fmt.Errorf("exited (%v):\n%s", err, ts.out.String())
		default:
		}
		resp, err := hc.Get(ts.URL + "/ct/v1/get-roots")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("no answer within 30s:\n%s", ts.out.String())
}

func (ts *TesseraCT) stop(t testing.TB, exited chan error) {
	ts.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		ts.cmd.Process.Kill()
		<-exited
	}
	if t.Failed() {
		t.Logf("TesseraCT output:\n%s", ts.out.String())
	}
}

// Output is what the log has printed so far.
func (ts *TesseraCT) Output() string { return ts.out.String() }

// PublicKeyPEM is the log's public key as a PEM "PUBLIC KEY" block.
func (ts *TesseraCT) PublicKeyPEM() string { return PublicKeyPEM(ts.Key.Public()) }

// TreeSize reads the size line of the log's published checkpoint (C2SP
// tlog-checkpoint: origin, size, root hash, blank line, signatures); -1
// before the first checkpoint.
func (ts *TesseraCT) TreeSize(t testing.TB) int64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(ts.Storage, "checkpoint"))
	if errors.Is(err, os.ErrNotExist) {
		return -1
	}
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitN(string(b), "\n", 3)
	if len(lines) < 3 || lines[0] != ts.Origin {
		t.Fatalf("unexpected checkpoint %q", b)
	}
	n, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		t.Fatalf("checkpoint size %q: %v", lines[1], err)
	}
	return n
}

// WaitTreeSize polls the checkpoint until it reaches at least n (30s at
// most) and returns the size it saw.
func (ts *TesseraCT) WaitTreeSize(t testing.TB, n int64) int64 {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := ts.TreeSize(t)
		if got >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("checkpoint size %d, want at least %d", got, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
