// Command storefill fills a CA store with N issued-certificate records, for
// issue 4's store-size and `cert show` latency figures (scripts/bench-store.sh).
//
// Each record goes through the store's public write path, as the CA's
// issuance does: ReserveSerial (pending, with the to-be-signed copy), then
// StoreIssued (the final certificate), from -workers goroutines. The
// certificates are stand-ins with the shape of a real leaf: the template
// is a certificate already in the store (by default the first final one,
// e.g. the quickstart's own server certificate), re-issued with a fresh
// random 128-bit serial and a unique DNS name and signed by a throwaway
// P-256 key under the same issuer name, so that their size is that of the
// CA's own leaves. They are not signed by the CA's issuer key, so they
// belong in a benchmark store only.
//
//	go run ./internal/storefill -store DIR/ca.db -n 1000000
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hsmca/hsmca/ca"
	"github.com/hsmca/hsmca/store"
)

func main() {
	path := flag.String("store", "", "the CA store (bbolt file) to fill; the CA must not be running")
	n := flag.Int("n", 1_000_000, "records to add")
	workers := flag.Int("workers", 256, "concurrent writers (the store's log shares one fdatasync among waiting writers)")
	serials := flag.String("serials", "", "write every (N/100)th serial added to this file, one per line (for lookups)")
	flag.Parse()
	if *path == "" || *n <= 0 || *workers <= 0 {
		fmt.Fprintln(os.Stderr, "usage: storefill -store FILE [-n N] [-workers W]")
		os.Exit(2)
	}
	if err := run(*path, *n, *workers, *serials); err != nil {
		fmt.Fprintln(os.Stderr, "storefill:", err)
		os.Exit(1)
	}
}

func run(path string, n, workers int, serialsPath string) error {
	st, err := store.Open(path)
	if err != nil {
		return err
	}
	closed := false
	defer func() {
		if !closed {
			st.Close()
		}
	}()
	ctx := context.Background()
	tmplRec, err := templateRecord(ctx, st)
	if err != nil {
		return err
	}
	tmpl, err := x509.ParseCertificate(tmplRec.DER)
	if err != nil {
		return fmt.Errorf("template %s: %w", tmplRec.Serial, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	parent := &x509.Certificate{Subject: tmpl.Issuer, SubjectKeyId: tmpl.AuthorityKeyId}

	var (
		next, done atomic.Int64
		sampleMu   sync.Mutex
		sample     []string
	)
	every := int64(max(n/100, 1))
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	start := time.Now()
	stopProgress := progress(&done, n, start)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				serial, err := fill(ctx, st, tmplRec, tmpl, parent, key, i)
				if err != nil {
					errs <- err
					return
				}
				if i%every == 0 {
					sampleMu.Lock()
					sample = append(sample, serial)
					sampleMu.Unlock()
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	stopProgress()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	elapsed := time.Since(start)
	if serialsPath != "" {
		if err := os.WriteFile(serialsPath, []byte(strings.Join(sample, "\n")+"\n"), 0o644); err != nil {
			return err
		}
	}
	closed = true
	if err := st.Close(); err != nil { // folds the log into bbolt
		return err
	}
	fmt.Fprintf(os.Stderr, "storefill: %d records in %s (%.0f/s), closed in %s\n", n, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), (time.Since(start) - elapsed).Round(time.Millisecond))
	return nil
}

// templateRecord is a final certificate of the "server" profile in the
// store, or else any final certificate.
func templateRecord(ctx context.Context, st *store.Store) (ca.Record, error) {
	recs, err := st.ListCerts(ctx, ca.Query{})
	if err != nil {
		return ca.Record{}, err
	}
	var found *ca.Record
	for i, r := range recs {
		if !r.Final || len(r.DER) == 0 || r.Precert {
			continue
		}
		if found == nil || r.Profile == "server" && found.Profile != "server" {
			found = &recs[i]
		}
	}
	if found == nil {
		return ca.Record{}, errors.New("the store holds no final certificate to use as a template (run `hsmca quickstart` on it once)")
	}
	return *found, nil
}

// fill writes record i, pending and then final, and returns its serial.
func fill(ctx context.Context, st *store.Store, tr ca.Record, tmpl, parent *x509.Certificate, key *ecdsa.PrivateKey, i int64) (string, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return "", err
	}
	serial.SetBit(serial, 127, 1) // always 128 bits, like the CA's
	c := *tmpl
	c.SerialNumber = serial
	name := fmt.Sprintf("host-%d.fill.test", i)
	c.DNSNames, c.IPAddresses = []string{name}, nil
	c.RawSubject, c.Subject.CommonName = nil, ""
	c.ExtraExtensions, c.Extensions = nil, nil
	der, err := x509.CreateCertificate(rand.Reader, &c, parent, &key.PublicKey, key)
	if err != nil {
		return "", fmt.Errorf("record %d: %w", i, err)
	}
	rec := ca.Record{
		Serial:    ca.SerialString(serial),
		Issuer:    tr.Issuer,
		Profile:   tr.Profile,
		Status:    ca.StatusPending,
		DER:       der,
		Names:     []string{name},
		NotBefore: c.NotBefore,
		NotAfter:  c.NotAfter,
		Created:   time.Now().UTC(),
	}
	if err := st.ReserveSerial(ctx, rec); err != nil {
		return "", fmt.Errorf("record %d: %w", i, err)
	}
	return rec.Serial, st.StoreIssued(ctx, rec.Serial, der, nil)
}

// progress prints a line on stderr every 5 s until the returned func is
// called.
func progress(done *atomic.Int64, n int, start time.Time) func() {
	stop := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				d := done.Load()
				fmt.Fprintf(os.Stderr, "storefill: %d/%d (%.0f/s)\n", d, n, float64(d)/time.Since(start).Seconds())
			}
		}
	}()
	return func() { close(stop); <-finished }
}
