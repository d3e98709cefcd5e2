package ct

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// tesseract is a running TesseraCT POSIX log (a real CT log nobody here
// wrote) on loopback.
type tesseract struct {
	url     string // submission prefix
	key     *ecdsa.PrivateKey
	storage string
	cmd     *exec.Cmd
	out     *lockedBuffer
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

// tesseractBinary finds bin/peers/posix (installed by make deps). It skips
// the test when missing, except in CI where it fails.
func tesseractBinary(t testing.TB) string {
	t.Helper()
	bin, err := filepath.Abs(filepath.Join("..", "bin", "peers", "posix"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("TesseraCT binary %s missing: run make deps", bin)
		}
		t.Skipf("TesseraCT binary %s missing: run make deps (scripts/deps.sh installs it)", bin)
	}
	return bin
}

// startTesseract runs TesseraCT accepting chains to root. It picks a free
// port, retrying a few times if another process takes it first.
func startTesseract(t testing.TB, root *x509.Certificate) *tesseract {
	t.Helper()
	bin := tesseractBinary(t)
	dir := t.TempDir()
	key := newKey(t)
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(dir, "log-key.pem")
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	rootsPath := filepath.Join(dir, "roots.pem")
	writePEM(t, rootsPath, "CERTIFICATE", root.Raw)

	var lastErr error
	for try := 0; try < 3; try++ {
		port := freePort(t)
		storage := filepath.Join(dir, fmt.Sprintf("storage-%d", try))
		out := &lockedBuffer{}
		cmd := exec.Command(bin,
			"--http_endpoint=127.0.0.1:"+port,
			"--storage_dir="+storage,
			"--origin=127.0.0.1/hsmca-test",
			"--path_prefix=/hsmca-test",
			"--private_key="+keyPath,
			"--roots_pem_file="+rootsPath,
			"--accept_sha1_signing_algorithms=false",
			"--checkpoint_interval=500ms",
		)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatalf("start TesseraCT: %v", err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		ts := &tesseract{url: "http://127.0.0.1:" + port + "/hsmca-test", key: key, storage: storage, cmd: cmd, out: out}
		if lastErr = ts.waitReady(exited); lastErr == nil {
			t.Cleanup(func() { ts.stop(t, exited) })
			return ts
		}
		cmd.Process.Kill()
		<-exited
	}
	t.Fatalf("TesseraCT did not start: %v", lastErr)
	return nil
}

func freePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

// waitReady polls get-roots until the log answers, the process exits or
// 30 seconds pass.
func (ts *tesseract) waitReady(exited chan error) error {
	deadline := time.Now().Add(30 * time.Second)
	hc := &http.Client{Timeout: 2 * time.Second}
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			exited <- err
			return fmt.Errorf("exited (%v):\n%s", err, ts.out.String())
		default:
		}
		resp, err := hc.Get(ts.url + "/ct/v1/get-roots")
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

func (ts *tesseract) stop(t testing.TB, exited chan error) {
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

// treeSize reads the size line of the log's published checkpoint
// (C2SP tlog-checkpoint: origin, size, root hash, blank line, signatures).
func (ts *tesseract) treeSize(t testing.TB) int64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(ts.storage, "checkpoint"))
	if os.IsNotExist(err) {
		return -1
	}
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitN(string(b), "\n", 3)
	if len(lines) < 3 || lines[0] != "127.0.0.1/hsmca-test" {
		t.Fatalf("unexpected checkpoint %q", b)
	}
	n, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		t.Fatalf("checkpoint size %q: %v", lines[1], err)
	}
	return n
}

// waitTreeSize polls the checkpoint until it reaches at least n.
func (ts *tesseract) waitTreeSize(t testing.TB, n int64) int64 {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := ts.treeSize(t)
		if got >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("checkpoint size %d, want at least %d", got, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (ts *tesseract) logConfig(t testing.TB) LogConfig {
	return LogConfig{Name: "tesseract", URL: ts.url, PublicKey: pubPEM(t, ts.key.Public()), Operator: "local"}
}

// TestTesseraCT issues certificates with SCTs from a real TesseraCT log:
// the SCT verifies, embeds, passes VerifyEmbedded and openssl, and the
// log's checkpoint grows with each submission.
func TestTesseraCT(t *testing.T) {
	if testing.Short() {
		t.Skip("starts TesseraCT")
	}
	pki := newTestPKI(t)
	ts := startTesseract(t, pki.root)
	s, err := New(Config{Logs: []LogConfig{ts.logConfig(t)}, Deadline: time.Minute}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	before := ts.waitTreeSize(t, 0)

	var last *x509.Certificate
	for i := 0; i < 2; i++ {
		iss := pki.precert(t, leafTemplate(t, fmt.Sprintf("tesseract%d.example.test", i)))
		scts, err := s.GetSCTs(context.Background(), iss.chain())
		if err != nil {
			t.Fatalf("GetSCTs from TesseraCT: %v\n%s", err, ts.out.String())
		}
		if len(scts) != 1 {
			t.Fatalf("got %d SCTs, want 1", len(scts))
		}
		sct, err := ParseSCT(scts[0])
		if err != nil {
			t.Fatal(err)
		}
		if len(sct.Extensions) == 0 {
			t.Error("TesseraCT's SCT has no extensions (static-ct-api puts the leaf index there)")
		}
		final := iss.final(t, scts)
		if err := MatchesPrecert(iss.precert.Raw, final.Raw); err != nil {
			t.Fatal(err)
		}
		got, err := VerifyEmbedded(final, pki.inter, s.Logs())
		if err != nil || len(got) != 1 || got[0].LogName != "tesseract" {
			t.Fatalf("VerifyEmbedded = %+v, %v", got, err)
		}
		size := ts.waitTreeSize(t, before+int64(i)+1)
		t.Logf("certificate %d: SCT at %s, checkpoint size %d", i, got[0].Timestamp.UTC().Format(time.RFC3339Nano), size)
		last = final
	}

	// The artefacts an operator would check by hand.
	dir := t.TempDir()
	certPath, issuerPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "issuer.pem"), filepath.Join(dir, "tesseract.pem")
	writePEM(t, certPath, "CERTIFICATE", last.Raw)
	writePEM(t, issuerPath, "CERTIFICATE", pki.inter.Raw)
	writeFile(t, keyPath, []byte(pubPEM(t, ts.key.Public())))
	if openssl, err := exec.LookPath("openssl"); err == nil {
		out, err := exec.Command(openssl, "x509", "-in", certPath, "-text", "-noout").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "CT Precertificate SCTs") {
			t.Errorf("openssl does not show the SCT list (%v):\n%s", err, out)
		}
	}
	// make test sets HSMCA to the built binary: check the CLI end to end.
	if bin := os.Getenv("HSMCA"); bin != "" {
		out, err := exec.Command(bin, "ct", "verify", certPath, "--issuer", issuerPath, "--log-key", keyPath).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "tesseract") {
			t.Errorf("hsmca ct verify: %v\n%s", err, out)
		}
	}
}

// BenchmarkTesseraCT measures add-pre-chain against the local TesseraCT
// (checkpoint_interval 500ms) at several concurrencies, reporting SCTs per
// second and per-submission latency. TesseraCT batches entries
// (batch_max_age 250ms) and answers once the entry is covered by a
// published checkpoint, so a submission waits for a checkpoint whatever
// the load; throughput comes from concurrent submissions sharing batches
// and checkpoints.
func BenchmarkTesseraCT(b *testing.B) {
	pki := newTestPKI(b)
	ts := startTesseract(b, pki.root)
	s, err := New(Config{Logs: []LogConfig{ts.logConfig(b)}, Deadline: time.Minute}, Options{})
	if err != nil {
		b.Fatal(err)
	}
	for _, conc := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("conc=%d", conc), func(b *testing.B) {
			// Fresh precertificates: TesseraCT answers resubmissions from
			// its dedup cache, which would measure something else.
			chains := make([][][]byte, b.N)
			for i := range chains {
				chains[i] = pki.precert(b, leafTemplate(b, fmt.Sprintf("bench%d.example.test", i))).chain()
			}
			lat := make([]time.Duration, b.N)
			next := make(chan int, b.N)
			for i := 0; i < b.N; i++ {
				next <- i
			}
			close(next)
			b.ResetTimer()
			var wg sync.WaitGroup
			for w := 0; w < conc; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range next {
						start := time.Now()
						if _, err := s.GetSCTs(context.Background(), chains[i]); err != nil {
							b.Error(err)
							return
						}
						lat[i] = time.Since(start)
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "scts/s")
			b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Milliseconds()), "p99-ms")
		})
	}
}

// BenchmarkGetSCTsFakeLog measures the submitter's own cost (parse,
// request, verify) against one in-process log.
func BenchmarkGetSCTsFakeLog(b *testing.B) {
	pki := newTestPKI(b)
	f := newFakeLog(b, fakeOK)
	s, err := New(Config{Logs: []LogConfig{f.config(b, "f", "")}}, Options{})
	if err != nil {
		b.Fatal(err)
	}
	chain := pki.precert(b, leafTemplate(b, "bench.example.test")).chain()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := s.GetSCTs(context.Background(), chain); err != nil {
			b.Fatal(err)
		}
	}
}
