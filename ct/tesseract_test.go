package ct

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hsmca/hsmca/ct/cttest"
)

func tesseractLog(ts *cttest.TesseraCT) LogConfig {
	return LogConfig{Name: "tesseract", URL: ts.URL, PublicKey: ts.PublicKeyPEM(), Operator: "local"}
}

// TestTesseraCT issues certificates with SCTs from a real TesseraCT log:
// the SCT verifies, embeds, passes VerifyEmbedded and openssl, and the
// log's checkpoint grows with each submission.
func TestTesseraCT(t *testing.T) {
	if testing.Short() {
		t.Skip("starts TesseraCT")
	}
	pki := newTestPKI(t)
	ts := cttest.StartTesseraCT(t, pki.root)
	s, err := New(Config{Logs: []LogConfig{tesseractLog(ts)}, Deadline: time.Minute}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	before := ts.WaitTreeSize(t, 0)

	var last *x509.Certificate
	for i := 0; i < 2; i++ {
		iss := pki.precert(t, leafTemplate(t, fmt.Sprintf("tesseract%d.example.test", i)))
		scts, err := s.GetSCTs(context.Background(), iss.chain())
		if err != nil {
			t.Fatalf("GetSCTs from TesseraCT: %v\n%s", err, ts.Output())
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
		size := ts.WaitTreeSize(t, before+int64(i)+1)
		t.Logf("certificate %d: SCT at %s, checkpoint size %d", i, got[0].Timestamp.UTC().Format(time.RFC3339Nano), size)
		last = final
	}

	// The artefacts an operator would check by hand.
	dir := t.TempDir()
	certPath, issuerPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "issuer.pem"), filepath.Join(dir, "tesseract.pem")
	writePEM(t, certPath, "CERTIFICATE", last.Raw)
	writePEM(t, issuerPath, "CERTIFICATE", pki.inter.Raw)
	writeFile(t, keyPath, []byte(pubPEM(t, ts.Key.Public())))
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
	ts := cttest.StartTesseraCT(b, pki.root)
	s, err := New(Config{Logs: []LogConfig{tesseractLog(ts)}, Deadline: time.Minute}, Options{})
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
	f := cttest.NewFakeLog(b, cttest.OK)
	s, err := New(Config{Logs: []LogConfig{logCfg(f, "f", "")}}, Options{})
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
