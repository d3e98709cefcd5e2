package ca_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsmca/hsmca/ca"
)

// BenchmarkIssueVsBare is issue 4's comparison at equal concurrency: for
// 1, 2 and 8 goroutines in all (not per CPU), bare x509.CreateCertificate
// with a plain crypto/ecdsa P-256 issuer key, then Issue and IssueVerified
// with a soft module's P-256 key (benchCA) on the durable store,
// one after the other so that each ratio's two sides run under the same
// conditions. BenchmarkIssueP256's par2/par8 (goroutines per CPU) compared
// with the sequential bare benchmark set a parallel issuance against a
// single-threaded baseline; these pairs do not.
func BenchmarkIssueVsBare(b *testing.B) {
	for _, g := range []int{1, 2, 8} {
		b.Run(fmt.Sprintf("g%d/bare", g), func(b *testing.B) {
			p := newPKI(b)
			leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			var serial atomic.Int64
			b.ResetTimer()
			defer cpuMeter(b)()
			runGoroutines(b, g, func() func() error {
				tmpl := bareTemplate()
				return func() error {
					tmpl.SerialNumber = big.NewInt(serial.Add(1))
					_, err := x509.CreateCertificate(rand.Reader, tmpl, p.inter, leafKey.Public(), p.interKey)
					return err
				}
			})
		})
		b.Run(fmt.Sprintf("g%d/issue", g), func(b *testing.B) {
			tc := benchCA(b, "bbolt")
			req := ca.IssueRequest{CSR: makeCSR(b, csrOpts{dns: []string{"a.svc.corp"}}), Profile: "server"}
			b.ResetTimer()
			defer cpuMeter(b)()
			runGoroutines(b, g, func() func() error {
				return func() error {
					_, err := tc.Issue(context.Background(), req)
					return err
				}
			})
		})
		b.Run(fmt.Sprintf("g%d/verified", g), func(b *testing.B) {
			tc := benchCA(b, "bbolt")
			req := verifiedRequest(b)
			b.ResetTimer()
			defer cpuMeter(b)()
			runGoroutines(b, g, func() func() error {
				return func() error {
					_, err := tc.IssueVerified(context.Background(), req)
					return err
				}
			})
		})
	}
}

// verifiedRequest is an IssueVerified request for a parsed CSR whose
// signature was checked, as ACME finalize passes it.
func verifiedRequest(b *testing.B) ca.IssueRequest {
	csr, err := ca.ParseCSR(makeCSR(b, csrOpts{dns: []string{"a.svc.corp"}}))
	if err != nil {
		b.Fatal(err)
	}
	return ca.IssueRequest{ParsedCSR: csr, Profile: "server"}
}

// bareTemplate is the leaf the bare CreateCertificate baselines sign.
func bareTemplate() *x509.Certificate {
	return &x509.Certificate{
		Subject:               pkix.Name{CommonName: "a.svc.corp"},
		DNSNames:              []string{"a.svc.corp"},
		NotBefore:             time.Now(),
		NotAfter:              time.Now().Add(90 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		CRLDistributionPoints: []string{"http://pki.svc.corp/crl/issuing-1.crl"},
		IssuingCertificateURL: []string{"http://pki.svc.corp/issuer/issuing-1.crt"},
	}
}

// runGoroutines runs b.N operations spread over g goroutines; newOp is
// called once per goroutine for its own operation (its own state).
func runGoroutines(b *testing.B, g int, newOp func() func() error) {
	var (
		next atomic.Int64
		wg   sync.WaitGroup
	)
	errc := make(chan error, g)
	for range g {
		op := newOp()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if err := op(); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
}
