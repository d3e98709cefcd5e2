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
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hsmca/hsmca/ca"
)

// Config configures the listeners. Zero durations and sizes take the
// defaults given on each field; negative ones are an error (except
// CRLInterval, where negative disables the schedule).
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
	// issuer-certificate endpoints. Defaults: the paths of the CA's URLs
	// (ca.URLs), so that what certificates name is what is served; a URL
	// without a path (http://ocsp.example) puts its endpoint at the root.
	// Without a URL: /crl, /ocsp, /aia. They may share a path (file names
	// end in .crl and .crt; an OCSP GET request never holds a '.'); none
	// may be /healthz, /metrics or lie under /admin or the ACME prefix.
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
	// Reload rebuilds the CA (profiles, policy, with the same signers), the
	// operator roots and the TLS file names from the configuration; the
	// server loads the TLS certificate, then swaps them in atomically. It
	// must have no side effects of its own: what it must change outside
	// the server goes into Reloaded.Commit. nil: Reload only re-reads the
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
	// TLSCertFile and TLSKeyFile, if set, replace Config.TLSCertFile and
	// TLSKeyFile (absolute, or relative to the working directory). A pair
	// that does not load fails the reload and keeps the running one.
	TLSCertFile, TLSKeyFile string
	// Commit, if set, is called once the server has accepted the reload
	// (the TLS certificate loaded), before it swaps anything in; an error
	// fails the reload. It is where the caller applies its own changes.
	Commit func() error
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
	if err := checkLimits(cfg); err != nil {
		return nil, err
	}
	if err := setDefaults(&cfg, d.CA.Config().URLs); err != nil {
		return nil, err
	}
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
		c, err := loadTLSCert(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			return nil, err
		}
		s.tlsCert.Store(c)
	}
	return s, nil
}

// checkLimits refuses negative timeouts and sizes: a negative
// ReadHeaderTimeout, say, would switch the timeout off instead of taking
// the default.
func checkLimits(cfg Config) error {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"ReadHeaderTimeout", cfg.ReadHeaderTimeout}, {"ReadTimeout", cfg.ReadTimeout},
		{"WriteTimeout", cfg.WriteTimeout}, {"IdleTimeout", cfg.IdleTimeout}, {"RetryAfter", cfg.RetryAfter},
	} {
		if d.v < 0 {
			return fmt.Errorf("server: %s %v: must not be negative (0 takes the default)", d.name, d.v)
		}
	}
	if cfg.MaxHeaderBytes < 0 {
		return fmt.Errorf("server: MaxHeaderBytes %d: must not be negative (0 takes the default)", cfg.MaxHeaderBytes)
	}
	if cfg.MaxBodyBytes < 0 {
		return fmt.Errorf("server: MaxBodyBytes %d: must not be negative (0 takes the default)", cfg.MaxBodyBytes)
	}
	return nil
}

func setDefaults(cfg *Config, u ca.URLs) error {
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
	var err error
	if cfg.CRLPath, err = endpointPath("CRL (ca.urls.crl_base)", cfg.CRLPath, u.CRLBase, "/crl"); err != nil {
		return err
	}
	if cfg.AIAPath, err = endpointPath("AIA (ca.urls.aia_base)", cfg.AIAPath, u.AIABase, "/aia"); err != nil {
		return err
	}
	if cfg.OCSPPath, err = endpointPath("OCSP (ca.urls.ocsp)", cfg.OCSPPath, u.OCSP, "/ocsp"); err != nil {
		return err
	}
	return checkEndpoints(cfg)
}

// endpointPath picks the configured path, else the path of the CA's URL,
// else def. The result has no trailing slash; "" is the root (a URL
// without a path, such as http://ocsp.example.internal).
func endpointPath(what, configured, caURL, def string) (string, error) {
	p := configured
	if p == "" && caURL != "" {
		u, err := url.Parse(caURL)
		if err != nil {
			return "", fmt.Errorf("server: %s URL %q: %w", what, caURL, err)
		}
		if u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
			return "", fmt.Errorf("server: %s URL %q: a query or fragment cannot be served; give a plain http(s) URL", what, caURL)
		}
		p = u.Path
		if p == "" {
			p = "/"
		}
	}
	if p == "" {
		p = def
	}
	if strings.ContainsAny(p, "{}?# \t\n") {
		return "", fmt.Errorf("server: %s path %q: cannot be served", what, p)
	}
	p = strings.TrimRight(p, "/")
	if p != "" && !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	if p != "" && path.Clean(p) != p {
		// The mux refuses patterns with "//", "." or ".." segments, and a
		// client would not send such a path as written.
		return "", fmt.Errorf("server: %s path %q is not clean; write it as %q", what, p, path.Clean(p))
	}
	return p, nil
}

// under reports whether the URL path p is base or below it; base "" is
// the root, under which every path lies.
func under(p, base string) bool {
	return p == base || strings.HasPrefix(p, base+"/")
}

// checkEndpoints refuses CRL, AIA or OCSP paths that are, or lie under, a
// fixed route, and one at the root when ACME is at the root: requests
// there would not reach the endpoint. Endpoints may
// share a path, the root included: CRL and AIA file names end in .crl and
// .crt, and an OCSP GET request (base64) never holds a '.'.
func checkEndpoints(cfg *Config) error {
	acme := strings.TrimRight(cfg.ACMEPrefix, "/")
	fixed := []string{"/healthz", "/metrics", "/admin", acme}
	for _, ep := range []struct{ name, p string }{{"CRL", cfg.CRLPath}, {"AIA", cfg.AIAPath}, {"OCSP", cfg.OCSPPath}} {
		if acme == "" && ep.p == "" {
			// ACME at the root takes every path the fixed routes and the
			// other endpoints do not: one at the root too would take
			// ACME's requests.
			return fmt.Errorf("server: ACME is served at the root, and so is the %s URL; give the %s URL (ca.urls) a path", ep.name, ep.name)
		}
		for _, f := range fixed {
			if ep.p != "" && f != "" && under(ep.p, f) {
				return fmt.Errorf("server: the %s path %s lies on the route %s; give it another path in ca.urls", ep.name, ep.p, f)
			}
		}
	}
	return nil
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

func loadTLSCert(certFile, keyFile string) (*tls.Certificate, error) {
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		// tls errors name the file's problem, never the key.
		return nil, fmt.Errorf("server: TLS certificate %s (key %s): %w", certFile, keyFile, err)
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
// signers), and the TLS certificate, from the files the new configuration
// names. The CA and the operator roots are swapped in together, in one
// atomic store; requests in flight finish on the old CA. Reloads run one
// at a time, so of two overlapping reloads the one that started last
// decides what is in force. The new operator roots apply to the next
// handshake and to the next admin request on a connection already open,
// so a root removed from the configuration is refused at once. On error
// nothing changes, the TLS certificate included.
func (s *Server) Reload() error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	var next *Reloaded
	if s.d.Reload != nil {
		n, err := s.d.Reload()
		if err != nil {
			return fmt.Errorf("server: reload: %w", err)
		}
		if n.CA == nil {
			return errors.New("server: reload: no CA was rebuilt")
		}
		next = &n
	}
	certFile, keyFile := s.cfg.TLSCertFile, s.cfg.TLSKeyFile
	if next != nil && (next.TLSCertFile != "" || next.TLSKeyFile != "") {
		if next.TLSCertFile == "" || next.TLSKeyFile == "" {
			return errors.New("server: reload: the TLS certificate and key files must both be named")
		}
		certFile, keyFile = next.TLSCertFile, next.TLSKeyFile
	}
	var cert *tls.Certificate
	if s.cfg.HTTPSAddr != "" {
		var err error
		if cert, err = loadTLSCert(certFile, keyFile); err != nil {
			return fmt.Errorf("server: reload: %w", err)
		}
	}
	if next != nil {
		if next.Commit != nil {
			if err := next.Commit(); err != nil {
				return fmt.Errorf("server: reload: %w", err)
			}
		}
		s.gen.Store(&generation{ca: next.CA, ops: operatorPool(next.OperatorRoots, next.CA)})
	}
	// Only Reload (under reloadMu) and New read the file names.
	s.cfg.TLSCertFile, s.cfg.TLSKeyFile = certFile, keyFile
	if cert != nil {
		s.tlsCert.Store(cert)
	}
	s.log.Info("server: reloaded configuration")
	return nil
}

// maxSocketPath is the longest path a unix socket can be bound at
// (sockaddr_un's sun_path, less its terminating NUL).
var maxSocketPath = len(syscall.RawSockaddrUnix{}.Path) - 1

// listenSocket creates the admin unix socket with mode 0600. The socket is
// made in a private directory next to path, chmod-ed, then renamed into
// place, so it is never reachable with looser permissions. The directory's
// name is short (DIR/.sXXXX/s), so that the socket is made at a path no
// longer than path itself for any name of eight bytes or more. A stale
// socket (no server answers) is removed; a live one is an error.
func listenSocket(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	// The temporary path has the length of dir/.sXXXX/s whatever XXXX is.
	if n := max(len(path), len(filepath.Join(dir, ".s0000", "s"))); n > maxSocketPath {
		return nil, fmt.Errorf("server: admin socket %s: the path is too long for a unix socket (%d bytes needed, at most %d); choose a shorter server.admin_socket", path, n, maxSocketPath)
	}
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
	priv, err := mkdirShort(dir)
	if err != nil {
		return nil, fmt.Errorf("server: admin socket: %w", err)
	}
	defer os.RemoveAll(priv)
	tmp := filepath.Join(priv, "s")
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

// mkdirShort makes a new private (0700) directory in dir named .s and
// four random hex digits, like os.MkdirTemp but with a short name.
func mkdirShort(dir string) (string, error) {
	var b [2]byte
	for range 1000 {
		if _, err := rand.Read(b[:]); err != nil {
			return "", err
		}
		p := filepath.Join(dir, fmt.Sprintf(".s%04x", binary.BigEndian.Uint16(b[:])))
		err := os.Mkdir(p, 0o700)
		if err == nil {
			return p, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return "", err
		}
	}
	return "", fmt.Errorf("no free temporary directory name in %s", dir)
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
// outcome; it returns what it made. An issuer whose CRL fails (its
// partition sealed, say) does not keep the others from theirs: the error
// returned joins every issuer's.
func (s *Server) generateCRLs(ctx context.Context, issuer string) ([]CRLEntry, error) {
	out, failed, _ := s.generateCRLsEach(ctx, issuer)
	errs := make([]error, len(failed))
	for i, f := range failed {
		errs[i] = f.err
	}
	return out, errors.Join(errs...)
}

// crlFailure is an issuer whose CRL generateCRLsEach could not make.
type crlFailure struct {
	issuer string
	err    error
}

// generateCRLsEach makes the CRL of issuer ("" means every issuer), going
// on past an issuer that fails, and returns the CRLs made, the failures and
// the default issuer of the CA it used (a reload may swap the CA after).
func (s *Server) generateCRLsEach(ctx context.Context, issuer string) ([]CRLEntry, []crlFailure, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.CA()
	names := c.Issuers()
	def := ""
	if d, err := c.Issuer(""); err == nil {
		def = d.Name
	}
	if issuer != "" {
		if _, err := c.Issuer(issuer); err != nil {
			return nil, []crlFailure{{issuer, err}}, def
		}
		names = []string{issuer}
	}
	var (
		out    []CRLEntry
		failed []crlFailure
	)
	for _, name := range names {
		der, err := c.GenerateCRL(ctx, name)
		if err != nil {
			if errors.Is(err, ca.ErrSealed) {
				s.log.Debug("server: CRL not regenerated: sealed", "issuer", name)
			} else {
				s.log.Error("server: CRL generation failed", "issuer", name, "err", err)
			}
			failed = append(failed, crlFailure{name, fmt.Errorf("server: CRL of %s: %w", name, err)})
			continue
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
	return out, failed, def
}
