package integration_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hsmca/hsmca/ca"
	"github.com/hsmca/hsmca/ct"
	"github.com/hsmca/hsmca/ct/cttest"
)

// BenchmarkIssueTesseraCT measures whole issuances (lint, record and sign
// the precertificate, add-pre-chain to a local TesseraCT, lint, sign and
// store the final certificate) at several numbers of concurrent issuances,
// against the same CA without CT. Each benchmark iteration runs conc
// issuances; ns/op is reported per issuance. It reports issuances per second and the
// p50 and p99 latency of one issuance. Submission is not batched by hsmca:
// each issuance submits on its own over the Submitter's pooled connections,
// and TesseraCT's sequencing batches and checkpoint interval (500ms here)
// set the latency.
func BenchmarkIssueTesseraCT(b *testing.B) {
	p := newPKI(b)
	ts := cttest.StartTesseraCT(b, p.root)
	sub, err := ct.New(ct.Config{Logs: []ct.LogConfig{tesseractLog(ts)}, Deadline: time.Minute}, ct.Options{})
	if err != nil {
		b.Fatal(err)
	}
	withCT := newCA(b, p, ca.CTEmbed, sub)
	noCT := newCA(b, p, ca.CTOff, sub)
	for _, bc := range []struct {
		name string
		c    *ca.CA
		conc []int
	}{{"ct=embed", withCT, []int{1, 16, 64}}, {"ct=off", noCT, []int{1, 16}}} {
		for _, conc := range bc.conc {
			b.Run(fmt.Sprintf("%s/conc=%d", bc.name, conc), func(b *testing.B) {
				benchIssue(b, bc.c, conc)
			})
		}
	}
}

// benchIssue runs b.N*conc issuances through conc workers, so that the
// workers stay busy however small b.N is.
func benchIssue(b *testing.B, c *ca.CA, conc int) {
	n := b.N * conc
	csrs := make([][]byte, n)
	for i := range csrs {
		csrs[i] = csr(b, fmt.Sprintf("bench%d-%d.svc.corp", i, time.Now().UnixNano()))
	}
	lat := make([]time.Duration, n)
	next := make(chan int, n)
	for i := range n {
		next <- i
	}
	close(next)
	b.ResetTimer()
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				start := time.Now()
				if _, err := c.Issue(context.Background(), ca.IssueRequest{CSR: csrs[i], Profile: "ct"}); err != nil {
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
	// ns/op per issuance, so that summaries computing ops/s from it (make
	// bench's report) show issuances per second.
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/op")
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "issues/s")
	b.ReportMetric(float64(lat[n/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[n*99/100].Microseconds())/1000, "p99-ms")
}
