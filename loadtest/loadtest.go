// Package loadtest is hsmca's load generator for RFC 8555 (ACME) servers:
// hsmca's own, Pebble, step-ca, Boulder. It runs a number of concurrent
// clients, one account each, that place orders, solve the challenges for
// real (its own http-01 and tls-alpn-01 servers and a stub DNS server that
// also answers the validator's A lookups with 127.0.0.1), finalize, poll
// and download the certificates, and it reports throughput, latency
// percentiles, errors by ACME problem type and its own CPU time.
//
// The package owns a lean ACME client written for measuring: it follows
// Retry-After and otherwise polls at a short interval, so that the numbers
// describe the server rather than the client. Every run stays on loopback
// unless told otherwise and is bounded in count and in time. The package
// never reads the environment and never writes to stdout; progress goes to
// the writer the caller passes.
package loadtest

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Config describes one load run. The zero value of every optional field is
// usable; Validate fills the defaults.
type Config struct {
	// URL is the ACME directory URL.
	URL string
	// Clients is the number of concurrent clients, one account each.
	Clients int
	// Orders is the total number of orders to place over all clients; 0
	// means no limit (Duration must then be set).
	Orders int
	// Duration stops placing new orders after this long; 0 means no limit
	// (Orders must then be set). Orders in flight are completed.
	Duration time.Duration
	// MaxTime is the hard cap on the whole run, account registration
	// included; orders still in flight are abandoned and counted as
	// unfinished. Zero means Duration+1m, or 10m without Duration.
	MaxTime time.Duration
	// NamesPerOrder is the number of DNS identifiers per order (default 1).
	NamesPerOrder int
	// KeyType is the key type of the certificates: ecdsa-p256 (default)
	// or rsa-2048. Each client generates one key and reuses it.
	KeyType string
	// Challenge is http-01 (default), tls-alpn-01 or dns-01.
	Challenge string
	// HTTPPort is where the http-01 server listens on 127.0.0.1 (default 80).
	HTTPPort int
	// TLSPort is where the tls-alpn-01 server listens on 127.0.0.1
	// (default 443).
	TLSPort int
	// DNSAddr, if set, is where the stub DNS server listens (host:port).
	// It is required for dns-01.
	DNSAddr string
	// Domain is the parent of every name ordered (default "load.test").
	Domain string
	// CABundle is a PEM file of roots for the directory's TLS certificate;
	// empty means the system roots.
	CABundle string
	// Insecure skips verification of the directory's TLS certificate.
	Insecure bool
	// Poll is the polling interval when the server sends no Retry-After
	// (default 10ms).
	Poll time.Duration
	// AllowRemote permits a URL or DNS address that is not on loopback.
	AllowRemote bool
	// SaveCerts, if set, is a directory where every downloaded certificate
	// chain is written (one PEM file per order, named after the client and
	// order), so that a test can check afterwards what clients received.
	SaveCerts string
}

// Limits on a run's size.
const (
	MaxClients       = 4096
	MaxNamesPerOrder = 100
)

// Validate checks c and fills in its defaults.
func (c *Config) Validate() error {
	if c.URL == "" {
		return errors.New("loadtest: the directory URL is required")
	}
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("loadtest: %q is not an http(s) URL", c.URL)
	}
	if !c.AllowRemote && !isLoopbackHost(u.Hostname()) {
		return fmt.Errorf("loadtest: %s is not a loopback host (pass --allow-remote to load a remote server)", u.Hostname())
	}
	if c.Clients == 0 {
		c.Clients = 1
	}
	if c.Clients < 1 || c.Clients > MaxClients {
		return fmt.Errorf("loadtest: clients must be between 1 and %d", MaxClients)
	}
	if c.Orders < 0 || c.Duration < 0 || c.MaxTime < 0 {
		return errors.New("loadtest: orders, duration and max-time must not be negative")
	}
	if c.Orders == 0 && c.Duration == 0 {
		return errors.New("loadtest: set a number of orders, a duration, or both")
	}
	if c.MaxTime == 0 {
		c.MaxTime = 10 * time.Minute
		if c.Duration > 0 {
			c.MaxTime = c.Duration + time.Minute
		}
	}
	if c.NamesPerOrder == 0 {
		c.NamesPerOrder = 1
	}
	if c.NamesPerOrder < 1 || c.NamesPerOrder > MaxNamesPerOrder {
		return fmt.Errorf("loadtest: names per order must be between 1 and %d", MaxNamesPerOrder)
	}
	switch c.KeyType {
	case "":
		c.KeyType = "ecdsa-p256"
	case "ecdsa-p256", "rsa-2048":
	default:
		return fmt.Errorf("loadtest: unknown key type %q (want ecdsa-p256 or rsa-2048)", c.KeyType)
	}
	switch c.Challenge {
	case "":
		c.Challenge = HTTP01
	case HTTP01, TLSALPN01:
	case DNS01:
		if c.DNSAddr == "" {
			return errors.New("loadtest: dns-01 needs a stub DNS address (--dns-addr)")
		}
	default:
		return fmt.Errorf("loadtest: unknown challenge %q (want http-01, tls-alpn-01 or dns-01)", c.Challenge)
	}
	if c.HTTPPort == 0 {
		c.HTTPPort = 80
	}
	if c.TLSPort == 0 {
		c.TLSPort = 443
	}
	if c.HTTPPort < 1 || c.HTTPPort > 65535 || c.TLSPort < 1 || c.TLSPort > 65535 {
		return errors.New("loadtest: ports must be between 1 and 65535")
	}
	if c.DNSAddr != "" {
		h, _, err := net.SplitHostPort(c.DNSAddr)
		if err != nil {
			return fmt.Errorf("loadtest: DNS address: %w", err)
		}
		if !c.AllowRemote && !isLoopbackHost(h) {
			return fmt.Errorf("loadtest: DNS address %s is not on loopback", c.DNSAddr)
		}
	}
	if c.Domain == "" {
		c.Domain = "load.test"
	}
	if c.Poll == 0 {
		c.Poll = 10 * time.Millisecond
	}
	if c.Poll < 0 {
		return errors.New("loadtest: poll interval must be positive")
	}
	return nil
}

// isLoopbackHost reports whether h is "localhost" or a loopback IP.
func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// httpClient builds the client that talks to the ACME server.
func (c *Config) httpClient() (*http.Client, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: c.Insecure} //nolint:gosec // operator's explicit choice
	if c.CABundle != "" {
		pemBytes, err := os.ReadFile(c.CABundle)
		if err != nil {
			return nil, fmt.Errorf("loadtest: CA bundle: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemBytes) {
			return nil, fmt.Errorf("loadtest: CA bundle %s holds no PEM certificate", c.CABundle)
		}
		tc.RootCAs = pool
	}
	tr := &http.Transport{
		Proxy:               nil, // a load test never goes through a proxy
		TLSClientConfig:     tc,
		MaxIdleConns:        2 * c.Clients,
		MaxIdleConnsPerHost: 2 * c.Clients,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 30 * time.Second,
	}
	return &http.Client{Transport: tr, Timeout: 2 * time.Minute}, nil
}

// Progress is one progress snapshot, passed to the progress writer once a
// second.
type Progress struct {
	Elapsed  time.Duration
	OK       int64
	Failed   int64
	InFlight int64
}

// run is the shared state of one run.
type run struct {
	cfg      Config
	solver   *solver
	runID    string
	next     atomic.Int64 // next order index
	ok       atomic.Int64
	failed   atomic.Int64
	inFlight atomic.Int64
	stats    counters

	mu       sync.Mutex
	lat      []time.Duration
	errs     map[string]int
	firstErr string
	unfinish int
	lastEnd  time.Time
}

func (r *run) recordErr(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs[errorLabel(err)]++
	if r.firstErr == "" {
		r.firstErr = err.Error()
	}
}

// Run performs one load run against cfg.URL and returns its report. It
// writes a progress line to progress (if not nil) every second. It returns
// an error only when the run could not start (bad configuration, a port in
// use, an unreachable directory, no account registered); failed orders are
// counted in the report.
func Run(ctx context.Context, cfg Config, progress io.Writer) (*Report, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cpu0 := cpuTime()
	ctx, cancel := context.WithTimeoutCause(ctx, cfg.MaxTime, errMaxTime)
	defer cancel()

	s, err := newSolver()
	if err != nil {
		return nil, err
	}
	defer s.close()
	if cfg.DNSAddr != "" {
		s.dns = NewStubDNS()
		if err := s.dns.Start(cfg.DNSAddr); err != nil {
			s.dns = nil
			return nil, err
		}
	}
	switch cfg.Challenge {
	case HTTP01:
		err = s.listenHTTP(net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.HTTPPort)))
	case TLSALPN01:
		err = s.listenTLSALPN(net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.TLSPort)))
	}
	if err != nil {
		return nil, err
	}

	hc, err := cfg.httpClient()
	if err != nil {
		return nil, err
	}
	defer hc.CloseIdleConnections()
	dir, err := fetchDirectory(ctx, hc, cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("loadtest: directory %s: %w", cfg.URL, err)
	}

	idb := make([]byte, 3)
	_, _ = rand.Read(idb)
	r := &run{cfg: cfg, solver: s, runID: hex.EncodeToString(idb), errs: make(map[string]int)}

	// Register every account before the clock starts.
	a0 := time.Now()
	clients := make([]*acmeClient, cfg.Clients)
	keys := make([]crypto.Signer, cfg.Clients)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			c, err := newACMEClient(hc, dir, cfg.Poll, &r.stats)
			if err == nil {
				keys[i], err = newCertKey(cfg.KeyType)
			}
			if err == nil {
				err = c.register(ctx)
			}
			if err != nil {
				r.recordErr(fmt.Errorf("loadtest: newAccount: %w", err))
				return
			}
			clients[i] = c
		})
	}
	wg.Wait()
	accountsS := time.Since(a0).Seconds()
	registered := 0
	for _, c := range clients {
		if c != nil {
			registered++
		}
	}
	if registered == 0 {
		return nil, fmt.Errorf("loadtest: no account could be registered: %s", r.firstErr)
	}

	t0 := time.Now()
	r.lastEnd = t0
	var stopReason atomic.Value
	stopReason.Store("")
	done := make(chan struct{})
	if progress != nil {
		go r.progress(progress, t0, done)
	}
	for i, c := range clients {
		if c == nil {
			continue
		}
		wg.Go(func() { r.worker(ctx, i, c, keys[i], t0, &stopReason) })
	}
	wg.Wait()
	close(done)

	r.stats.mu.Lock()
	if r.stats.retries == nil {
		r.stats.retries = map[string]int{}
	}
	r.stats.mu.Unlock()
	rep := &Report{
		URL:           cfg.URL,
		Clients:       cfg.Clients,
		Challenge:     cfg.Challenge,
		KeyType:       cfg.KeyType,
		NamesPerOrder: cfg.NamesPerOrder,
		Orders:        int(r.ok.Load()),
		FailedOrders:  int(r.failed.Load()),
		Unfinished:    r.unfinish,
		Errors:        r.errs,
		Accounts:      registered,
		AccountsS:     round3(accountsS),
		Requests:      r.stats.requests.Load(),
		RetryAfter:    r.stats.retryWaits.Load(),
		RetryAfterS:   round3(time.Duration(r.stats.retryWaitNs.Load()).Seconds()),
		Retried:       r.stats.retries,
		FirstError:    r.firstErr,
	}
	end := r.lastEnd
	switch {
	case errors.Is(context.Cause(ctx), errMaxTime):
		rep.Stopped = "max-time"
		end = time.Now()
	case ctx.Err() != nil:
		rep.Stopped = "canceled"
		end = time.Now()
	default:
		rep.Stopped, _ = stopReason.Load().(string)
	}
	rep.WallS = round3(end.Sub(t0).Seconds())
	rep.LastOrderS = round3(r.lastEnd.Sub(t0).Seconds())
	rep.fill(r.lat)
	rep.ClientCPUs = round3((cpuTime() - cpu0).Seconds())
	return rep, nil
}

// errMaxTime is the cause of a run's context ending at Config.MaxTime.
var errMaxTime = errors.New("loadtest: max-time reached")

func round3(f float64) float64 { return float64(int64(f*1000+0.5)) / 1000 }

// worker places orders with client c until the run's budget is spent.
func (r *run) worker(ctx context.Context, ci int, c *acmeClient, key crypto.Signer, t0 time.Time, stop *atomic.Value) {
	cfg := r.cfg
	for ctx.Err() == nil {
		if cfg.Duration > 0 && time.Since(t0) >= cfg.Duration {
			stop.CompareAndSwap("", "duration")
			return
		}
		idx := r.next.Add(1) - 1
		if cfg.Orders > 0 && idx >= int64(cfg.Orders) {
			stop.CompareAndSwap("", "orders")
			return
		}
		names := make([]string, cfg.NamesPerOrder)
		for j := range names {
			names[j] = fmt.Sprintf("o%d-%d-c%d-%s.%s", idx, j, ci, r.runID, cfg.Domain)
		}
		r.inFlight.Add(1)
		start := time.Now()
		chain, err := c.issue(ctx, r.solver, cfg.Challenge, names, key)
		end := time.Now()
		if err == nil && cfg.SaveCerts != "" {
			err = saveChain(cfg.SaveCerts, names[0], chain)
		}
		r.inFlight.Add(-1)
		if err != nil && ctx.Err() != nil {
			r.mu.Lock()
			r.unfinish++
			r.mu.Unlock()
			return
		}
		r.mu.Lock()
		if end.After(r.lastEnd) {
			r.lastEnd = end
		}
		if err == nil {
			r.lat = append(r.lat, end.Sub(start))
		}
		r.mu.Unlock()
		if err != nil {
			r.failed.Add(1)
			r.recordErr(err)
			// A server that fails fast must not turn the loop into a
			// busy spin.
			if w := c.wait(ctx, nil); w != nil {
				return
			}
			continue
		}
		r.ok.Add(1)
	}
}

// progress prints a line every second until done is closed.
func (r *run) progress(w io.Writer, t0 time.Time, done <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var prev int64
	for {
		select {
		case <-done:
			return
		case now := <-t.C:
			ok := r.ok.Load()
			fmt.Fprintf(w, "loadtest: %4.0fs  %d ok  %d failed  %d in flight  %d/s\n",
				now.Sub(t0).Seconds(), ok, r.failed.Load(), r.inFlight.Load(), ok-prev)
			prev = ok
		}
	}
}

// cpuTime is the user plus system CPU time of this process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// saveChain writes a received chain to dir/<first name>.pem. Names are unique
// per order, so an existing file means the same order was issued twice.
func saveChain(dir, name string, chain []byte) error {
	f, err := os.OpenFile(filepath.Join(dir, name+".pem"), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return clientErr("save-certs", "%v", err)
	}
	if _, err := f.Write(chain); err != nil {
		f.Close()
		return clientErr("save-certs", "%v", err)
	}
	return f.Close()
}
