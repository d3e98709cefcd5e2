package server

import (
	"bytes"
	"io"
	"net/http"
	"syscall"
	"testing"

	"golang.org/x/crypto/ocsp"
)

// BenchmarkOCSPCached measures OCSP responses per second over the HTTP
// listener for a certificate whose response is cached (the common case:
// relying parties ask about the same live certificates). Report with
// `go test -run - -bench OCSPCached ./server`; ops/s = 1e9 / ns/op.
func BenchmarkOCSPCached(b *testing.B) {
	e := newEnv(b, nil)
	sc := e.socketClient()
	e.activate(sc, "http://admin")
	var ci CertInfo
	if code, p, _ := call(b, sc, "POST", "http://admin/admin/cert/issue", IssueRequest{CSR: csrPEM(b, "bench.example.internal"), Profile: "server"}, &ci); code != 201 {
		b.Fatalf("issue: %d %v", code, p)
	}
	leaf := parsePEMCert(b, ci.Certificate)
	req := ocspRequest(b, leaf, e.inter)
	url := e.httpURL + "/ocsp"
	resp, body := postOCSP(b, url, req)
	if r, err := ocsp.ParseResponse(body, e.inter); resp.StatusCode != 200 || err != nil || r.Status != ocsp.Good {
		b.Fatalf("warm-up: %d %v", resp.StatusCode, err)
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	client := &http.Client{Transport: tr}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Post(url, "application/ocsp-request", bytes.NewReader(req))
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "responses/s")
	reportPeakRSS(b)
}

// BenchmarkAdminIssue measures admin-API issuances per second over the
// unix socket (CSR → lint → record → sign with a soft P-256 key → durable
// store), with parallel clients.
func BenchmarkAdminIssue(b *testing.B) {
	e := newEnv(b, nil)
	sc := e.socketClient()
	e.activate(sc, "http://admin")
	body := IssueRequest{CSR: csrPEM(b, "bench.example.internal"), Profile: "server"}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if code, p, _ := call(b, sc, "POST", "http://admin/admin/cert/issue", body, nil); code != 201 {
				b.Errorf("issue: %d %v", code, p)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "issuances/s")
	reportPeakRSS(b)
}

// reportPeakRSS adds the process's peak resident set size (the server runs
// in the benchmark's process) to the benchmark's output.
func reportPeakRSS(b *testing.B) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		b.ReportMetric(float64(ru.Maxrss)/1024, "peak-RSS-MiB")
	}
}
