// Package server is hsmca's running CA: the HTTP listeners of `hsmca ca
// serve`. It owns no certificate logic of its own; it puts the CA core
// (package ca), the ACME handler (package acme, mounted as an http.Handler)
// and the issuing partition's quorum (through the small Quorum interface the
// CLI implements over the HSM module) behind three listeners:
//
//   - HTTPS: ACME under /acme/ and the admin API under /admin/, which
//     requires a verified operator client certificate (mutual TLS) that the
//     CA issued with the operator profile and has not revoked;
//   - plain HTTP: CRLs, the OCSP responder (RFC 6960, GET and POST) and
//     issuer certificates at the URLs the CA writes into certificates, plus
//     /healthz and /metrics;
//   - a unix socket (mode 0600) serving the admin API to local operators.
//
// The server starts sealed: anything that needs a signature answers 503 with
// a problem document that says "CA awaits quorum (k of M)" and a Retry-After,
// while CRLs and OCSP keep serving what was signed last. Its own TLS key is a
// plain 0600 file, outside the HSM, on purpose: it must serve while sealed.
//
// server never imports hsm: the CLI maps module errors onto ErrShareRefused,
// ErrShareDuplicate and ErrLocked, and signer errors onto ca.ErrSealed.
package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hsmca/hsmca/ca"
)

// Config configures the listeners. Zero durations and sizes take the
// defaults given on each field.
type Config struct {
	// HTTPSAddr serves ACME and the admin API over TLS; "" disables it.
	HTTPSAddr string
	// HTTPAddr serves CRLs, OCSP, issuer certificates, /healthz and
	// /metrics over plain HTTP; "" disables it.
	HTTPAddr string
	// AdminSocket is the path of the admin API's unix socket (created
	// 0600); "" disables it.
	AdminSocket string
	// TLSCertFile (PEM chain) and TLSKeyFile (PEM key, mode 0600) are the
	// HTTPS listener's certificate. Required with HTTPSAddr.
	TLSCertFile string
	TLSKeyFile  string
	// OperatorRoots are the CA certificates that admin client certificates
	// must chain to. nil: every issuer certificate of the CA and the
	// certificates above it.
	OperatorRoots []*x509.Certificate
	// OperatorProfile is the profile an admin client certificate must have
	// been issued with (default "operator").
	OperatorProfile string
	// CRLPath, OCSPPath and AIAPath are the URL paths of the CRL, OCSP and
	// issuer-certificate endpoints. Defaults: the paths of the CA's
	// URLs (ca.URLs), else /crl, /ocsp, /aia.
	CRLPath, OCSPPath, AIAPath string
	// CRLFiles and IssuerFiles serve extra CRLs and certificates (PEM or
	// DER files) under CRLPath/<name>.crl and AIAPath/<name>.crt for CAs
	// that are not issuers of this server, typically the offline root
	// whose CRL and certificate a ceremony wrote.
	CRLFiles    map[string]string
	IssuerFiles map[string]string
	// ACMEPrefix is where the ACME handler is mounted (default "/acme/").
	ACMEPrefix string
	// CRLInterval is how often CRLs are regenerated while active (default
	// 1h; negative disables the schedule; revocations always trigger one).
	CRLInterval time.Duration
	// RetryAfter is what 503 answers tell clients while sealed (default 10s).
	RetryAfter time.Duration
	// Timeouts of every listener: ReadHeaderTimeout 10s, ReadTimeout 30s,
	// WriteTimeout 60s, IdleTimeout 120s; MaxHeaderBytes 64 KiB.
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	WriteTimeout      time.Duration
	IdleTimeout       time.Duration
	MaxHeaderBytes    int
	// MaxBodyBytes limits admin API and OCSP POST bodies (default 64 KiB).
	MaxBodyBytes int64
}

// Quorum is the issuing partition's activation, as the server needs it.
// The CLI implements it over an hsm.Partition.
type Quorum interface {
	// Status reports sealed/collecting/active and k of M.
	Status() (QuorumStatus, error)
	// AddShare presents one share in its text form. Errors wrap
	// ErrShareRefused, ErrShareDuplicate or ErrLocked; their text may name
	// the share's index but never quotes it.
	AddShare(shareText []byte) (QuorumStatus, error)
	// Seal forgets the partition's secret at once.
	Seal() error
}

// Pinger reports whether the store answers.
type Pinger interface{ Ping() error }

// Deps are the parts the server puts behind its listeners.
type Deps struct {
	// CA is the certificate authority. Required.
	CA *ca.CA
	// ACME is mounted under Config.ACMEPrefix on the HTTPS listener; nil
	// leaves ACME out.
	ACME http.Handler
	// Quorum is the issuing partition. Required.
	Quorum Quorum
	// Store answers /healthz. Required.
	Store Pinger
	// Logger; nil discards.
	Logger *slog.Logger
	// Metrics (from NewMetrics) and the Gatherer /metrics serves. nil
	// Metrics: a private set; nil Gatherer: prometheus.DefaultGatherer.
	Metrics  *Metrics
	Gatherer prometheus.Gatherer
	// Reload rebuilds the CA (profiles, policy, with the same signers) and
	// the operator roots from the configuration; the server swaps them in
	// atomically. It must fail without side effects when any part of the
	// new configuration cannot be loaded. nil: Reload only re-reads the
	// TLS certificate.
	Reload func() (Reloaded, error)
	// Clock; nil is time.Now.
	Clock func() time.Time
	// EAB manages ACME external account binding keys through the admin
	// API; nil: the EAB routes answer 404.
	EAB EABAdmin
}

// Reloaded is what Deps.Reload rebuilt from the configuration.
type Reloaded struct {
	// CA replaces the running CA. Required.
	CA *ca.CA
	// OperatorRoots replace Config.OperatorRoots; nil means the new CA's
	// issuer certificates and the certificates above them.
	OperatorRoots []*x509.Certificate
}

// Server is a running CA's set of listeners. Create it with New, then
// Start, and Shutdown when done.
type Server struct {
	cfg        Config
	d          Deps
	log        *slog.Logger
	m          *Metrics
	now        func() time.Time
	retryAfter time.Duration

	// gen is the CA and the operator roots of the current configuration,
	// swapped together by Reload, so that no request sees the CA of one
	// configuration with the operator roots of another. The handshake and
	// every admin request on HTTPS (keep-alive connections included)
	// verify the client certificate against the pool current at the time.
	gen      atomic.Pointer[generation]
	reloadMu sync.Mutex // one Reload at a time
	tlsCert  atomic.Pointer[tls.Certificate]

	ocspLast *ocspFallback
	crls     crlMeta

	httpsSrv, httpSrv, sockSrv *http.Server
	httpsLn, httpLn, sockLn    net.Listener

	crlKick  chan struct{}
	stop     chan struct{}
	stopOnce sync.Once
	bg       sync.WaitGroup
	errs     chan error
	mu       sync.Mutex // serialises activation and CRL generation bookkeeping
}

// Defaults.
const (
	defaultReadHeaderTimeout = 10 * time.Second
	defaultReadTimeout       = 30 * time.Second
	defaultWriteTimeout      = 60 * time.Second
	defaultIdleTimeout       = 120 * time.Second
	defaultMaxHeaderBytes    = 64 << 10
	defaultMaxBody           = 64 << 10
	defaultCRLInterval       = time.Hour
)

// New validates cfg and deps and prepares the handlers; it does not listen.
func New(cfg Config, d Deps) (*Server, error) {
	if d.CA == nil || d.Quorum == nil || d.Store == nil {
		return nil, errors.New("server: New needs a CA, a Quorum and a Store")
	}
	if cfg.HTTPSAddr == "" && cfg.HTTPAddr == "" && cfg.AdminSocket == "" {
		return nil, errors.New("server: no listener configured")
	}
	if cfg.HTTPSAddr != "" && (cfg.TLSCertFile == "" || cfg.TLSKeyFile == "") {
		return nil, errors.New("server: the HTTPS listener needs a TLS certificate and key file")
	}
	setDefaults(&cfg, d.CA.Config().URLs)
	s := &Server{
		cfg:        cfg,
		d:          d,
		log:        d.Logger,
		m:          d.Metrics,
		now:        d.Clock,
		retryAfter: cfg.RetryAfter,
		ocspLast:   newOCSPFallback(),
		crlKick:    make(chan struct{}, 1),
		stop:       make(chan struct{}),
		errs:       make(chan error, 3),
	}
	if s.log == nil {
		s.log = discardLogger()
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.m == nil {
		var err error
		if s.m, err = NewMetrics(nil); err != nil {
			return nil, err
		}
	}
	if s.d.Gatherer == nil {
		s.d.Gatherer = prometheus.DefaultGatherer
	}
	s.gen.Store(&generation{ca: d.CA, ops: operatorPool(cfg.OperatorRoots, d.CA)})
	if cfg.HTTPSAddr != "" {
		c, err := s.readTLSCert()
		if err != nil {
			return nil, err
		}
		s.tlsCert.Store(c)
	}
	return s, nil
}

func setDefaults(cfg *Config, u ca.URLs) {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&cfg.ReadHeaderTimeout, defaultReadHeaderTimeout)
	def(&cfg.ReadTimeout, defaultReadTimeout)
	def(&cfg.WriteTimeout, defaultWriteTimeout)
	def(&cfg.IdleTimeout, defaultIdleTimeout)
	def(&cfg.CRLInterval, defaultCRLInterval)
	def(&cfg.RetryAfter, defaultRetryAfter)
	if cfg.MaxHeaderBytes == 0 {
		cfg.MaxHeaderBytes = defaultMaxHeaderBytes
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = defaultMaxBody
	}
	if cfg.OperatorProfile == "" {
		cfg.OperatorProfile = "operator"
	}
	if cfg.ACMEPrefix == "" {
		cfg.ACMEPrefix = "/acme/"
	}
	cfg.CRLPath = endpointPath(cfg.CRLPath, u.CRLBase, "/crl")
	cfg.AIAPath = endpointPath(cfg.AIAPath, u.AIABase, "/aia")
	cfg.OCSPPath = endpointPath(cfg.OCSPPath, u.OCSP, "/ocsp")
}

// endpointPath picks the configured path, else the path of the CA's URL,
// else def; without a trailing slash.
func endpointPath(configured, caURL, def string) string {
	p := configured
	if p == "" && caURL != "" {
		if i := strings.Index(caURL, "://"); i >= 0 {
			rest := caURL[i+3:]
			if j := strings.IndexByte(rest, '/'); j >= 0 {
				p = rest[j:]
			}
		}
	}
	p = strings.TrimRight(p, "/")
	if p == "" {
		p = def
	}
	if !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	return p
}

// CA returns the CA currently served (Reload swaps it).
func (s *Server) CA() *ca.CA { return s.gen.Load().ca }

// generation is what one configuration loaded: the CA and the pool that
// admin client certificates must chain to.
type generation struct {
	ca  *ca.CA
	ops *x509.CertPool
}

// operatorRoots is the current operator pool (nil: no admin over HTTPS).
func (s *Server) operatorRoots() *x509.CertPool { return s.gen.Load().ops }

func (s *Server) readTLSCert() (*tls.Certificate, error) {
	c, err := tls.LoadX509KeyPair(s.cfg.TLSCertFile, s.cfg.TLSKeyFile)
	if err != nil {
		// tls errors name the file's problem, never the key.
		return nil, fmt.Errorf("server: TLS certificate %s: %w", s.cfg.TLSCertFile, err)
	}
	return &c, nil
}

// operatorPool makes the pool admin client certificates must chain to:
// roots if any, else every issuer certificate of c and those above it.
func operatorPool(roots []*x509.Certificate, c *ca.CA) *x509.CertPool {
	pool := x509.NewCertPool()
	if len(roots) > 0 {
		for _, r := range roots {
			pool.AddCert(r)
		}
		return pool
	}
	for _, name := range c.Issuers() {
		iss, err := c.Issuer(name)
		if err != nil {
			continue
		}
		pool.AddCert(iss.Cert)
		for _, up := range iss.Chain {
			pool.AddCert(up)
		}
	}
	return pool
}

// tlsConfigFor is the HTTPS listener's configuration for one handshake:
// it names the current operator roots, so that a reload applies to new
// connections at once.
func (s *Server) tlsConfigFor(*tls.ClientHelloInfo) (*tls.Config, error) {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.tlsCert.Load(), nil
		},
		ClientAuth: tls.VerifyClientCertIfGiven,
		ClientCAs:  s.operatorRoots(),
		NextProtos: []string{"h2", "http/1.1"},
	}, nil
}

func (s *Server) httpServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		ReadTimeout:       s.cfg.ReadTimeout,
		WriteTimeout:      s.cfg.WriteTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    s.cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
}

// Start opens the listeners and serves in the background. It returns once
// every listener is bound (or the first error, having closed what it
// opened). It also starts the CRL schedule.
func (s *Server) Start() (err error) {
	defer func() {
		if err != nil {
			s.closeListeners()
		}
	}()
	if s.cfg.AdminSocket != "" {
		if s.sockLn, err = listenSocket(s.cfg.AdminSocket); err != nil {
			return err
		}
	}
	if s.cfg.HTTPSAddr != "" {
		ln, err := net.Listen("tcp", s.cfg.HTTPSAddr)
		if err != nil {
			return fmt.Errorf("server: https listener: %w", err)
		}
		// Session ticket keys stay those of this outer config across
		// reloads; a resumed session is still checked per request.
		tc := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"},
			GetConfigForClient: s.tlsConfigFor}
		s.httpsLn = tls.NewListener(ln, tc)
	}
	if s.cfg.HTTPAddr != "" {
		if s.httpLn, err = net.Listen("tcp", s.cfg.HTTPAddr); err != nil {
			return fmt.Errorf("server: http listener: %w", err)
		}
	}
	if s.httpsLn != nil {
		s.httpsSrv = s.httpServer(s.m.instrument("https", routeName, s.httpsHandler()))
		s.serve(s.httpsSrv, s.httpsLn, "https")
	}
	if s.httpLn != nil {
		s.httpSrv = s.httpServer(s.m.instrument("http", routeName, s.publicHandler()))
		s.serve(s.httpSrv, s.httpLn, "http")
	}
	if s.sockLn != nil {
		s.sockSrv = s.httpServer(s.m.instrument("socket", routeName, s.adminHandler()))
		s.serve(s.sockSrv, s.sockLn, "socket")
	}
	s.bg.Add(1)
	go s.crlLoop()
	s.refreshQuorumGauge()
	s.log.Info("server: listening", "https", s.HTTPSAddr(), "http", s.HTTPAddr(), "socket", s.cfg.AdminSocket)
	return nil
}

func (s *Server) serve(srv *http.Server, ln net.Listener, name string) {
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("server: listener failed", "listener", name, "err", err)
			select {
			case s.errs <- fmt.Errorf("server: %s listener: %w", name, err):
			default:
			}
		}
	}()
}

// Errors delivers a listener's fatal error.
func (s *Server) Errors() <-chan error { return s.errs }

// HTTPSAddr and HTTPAddr return the bound addresses ("" if disabled), so
// that callers that asked for port 0 learn the port.
func (s *Server) HTTPSAddr() string { return lnAddr(s.httpsLn) }

// HTTPAddr returns the bound plain-HTTP address.
func (s *Server) HTTPAddr() string { return lnAddr(s.httpLn) }

func lnAddr(ln net.Listener) string {
	if ln == nil {
		return ""
	}
	return ln.Addr().String()
}

func (s *Server) closeListeners() {
	for _, ln := range []net.Listener{s.httpsLn, s.httpLn, s.sockLn} {
		if ln != nil {
			ln.Close()
		}
	}
}

// Shutdown stops accepting connections, lets in-flight requests finish
// (until ctx ends), stops the CRL schedule, seals the issuing partition and
// removes the admin socket. The caller then closes the ACME server, the
// module and the store.
func (s *Server) Shutdown(ctx context.Context) error {
	var errs []error
	for _, srv := range []*http.Server{s.httpsSrv, s.httpSrv, s.sockSrv} {
		if srv == nil {
			continue
		}
		if err := srv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("server: shutdown: %w", err))
			srv.Close()
		}
	}
	s.stopOnce.Do(func() { close(s.stop) })
	s.bg.Wait()
	if err := s.d.Quorum.Seal(); err != nil {
		errs = append(errs, fmt.Errorf("server: seal: %w", err))
	}
	if s.cfg.AdminSocket != "" && s.sockLn != nil {
		os.Remove(s.cfg.AdminSocket)
	}
	s.log.Info("server: stopped and sealed")
	return errors.Join(errs...)
}

// Reload re-reads what can change without a restart: the CA's profiles and
// policy and the operator roots (Deps.Reload builds a new CA with the same
// signers), and the TLS certificate. The CA and the operator roots are
// swapped in together, in one atomic store; requests in flight finish on
// the old CA. Reloads run one at a time, so of two overlapping reloads
// the one that started last decides what is in force. The new operator roots apply to
// the next handshake and to the next admin request on a connection already
// open, so a root removed from the configuration is refused at once. On
// error nothing changes.
func (s *Server) Reload() error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	var cert *tls.Certificate
	if s.cfg.HTTPSAddr != "" {
		var err error
		if cert, err = s.readTLSCert(); err != nil {
			return fmt.Errorf("server: reload: %w", err)
		}
	}
	if s.d.Reload != nil {
		next, err := s.d.Reload()
		if err != nil {
			return fmt.Errorf("server: reload: %w", err)
		}
		if next.CA == nil {
			return errors.New("server: reload: no CA was rebuilt")
		}
		s.gen.Store(&generation{ca: next.CA, ops: operatorPool(next.OperatorRoots, next.CA)})
	}
	if cert != nil {
		s.tlsCert.Store(cert)
	}
	s.log.Info("server: reloaded configuration")
	return nil
}

// listenSocket creates the admin unix socket with mode 0600. The socket is
// made in a private directory next to path, chmod-ed, then renamed into
// place, so it is never reachable with looser permissions. A stale socket
// (no server answers) is removed; a live one is an error.
func listenSocket(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		// Only a socket is ever removed: a mistyped admin_socket must not
		// delete the store or a share file that happens to be there.
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("server: admin socket %s: a file that is not a socket is in the way; remove it or choose another path", path)
		}
		c, derr := net.DialTimeout("unix", path, time.Second)
		if derr == nil {
			c.Close()
			return nil, fmt.Errorf("server: admin socket %s: another hsmca server is running there", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("server: remove stale admin socket: %w", err)
		}
	}
	dir, err := os.MkdirTemp(filepath.Dir(path), ".sock-")
	if err != nil {
		return nil, fmt.Errorf("server: admin socket: %w", err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("server: admin socket: %w", err)
	}
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("server: admin socket: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		return nil, fmt.Errorf("server: admin socket: %w", err)
	}
	return ln, nil
}

// quorumStatus asks the partition and updates the gauges.
func (s *Server) quorumStatus() (QuorumStatus, error) {
	q, err := s.d.Quorum.Status()
	if err == nil {
		s.m.setQuorum(q)
	}
	return q, err
}

func (s *Server) refreshQuorumGauge() { _, _ = s.quorumStatus() }

// KickCRL asks for the CRLs to be regenerated soon (after a revocation). It
// never blocks; regeneration happens only while the CA is active.
func (s *Server) KickCRL() {
	select {
	case s.crlKick <- struct{}{}:
	default:
	}
}

func (s *Server) crlLoop() {
	defer s.bg.Done()
	var tick <-chan time.Time
	if s.cfg.CRLInterval > 0 {
		t := time.NewTicker(s.cfg.CRLInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-s.stop:
			return
		case <-tick:
		case <-s.crlKick:
		}
		q, err := s.quorumStatus()
		if err != nil || !q.Active() {
			continue
		}
		s.generateCRLs(context.Background(), "")
	}
}

// generateCRLs makes a fresh CRL for issuer ("" every issuer) and logs the
// outcome; it returns what it made.
func (s *Server) generateCRLs(ctx context.Context, issuer string) ([]CRLEntry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.CA()
	names := c.Issuers()
	if issuer != "" {
		if _, err := c.Issuer(issuer); err != nil {
			return nil, err
		}
		names = []string{issuer}
	}
	var out []CRLEntry
	for _, name := range names {
		der, err := c.GenerateCRL(ctx, name)
		if err != nil {
			if errors.Is(err, ca.ErrSealed) {
				s.log.Debug("server: CRL not regenerated: sealed", "issuer", name)
			} else {
				s.log.Error("server: CRL generation failed", "issuer", name, "err", err)
			}
			return out, err
		}
		e := CRLEntry{Issuer: name, URL: c.Config().URLs.CRLURL(name),
			PEM: string(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}))}
		if rl, err := x509.ParseRevocationList(der); err == nil {
			e.Number = rl.Number.String()
			e.ThisUpdate, e.NextUpdate = rl.ThisUpdate, rl.NextUpdate
			e.Entries = len(rl.RevokedCertificateEntries)
		}
		out = append(out, e)
	}
	return out, nil
}
