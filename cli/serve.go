package cli

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"runtime"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/hsmca/hsmca/acme"
	"github.com/hsmca/hsmca/ca"
	"github.com/hsmca/hsmca/ct"
	"github.com/hsmca/hsmca/hsm"
	"github.com/hsmca/hsmca/server"
	"github.com/hsmca/hsmca/store"
)

func init() { commands = append(commands, newCACmd) }

func newCACmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Run the certificate authority (ACME, CRL, OCSP, AIA, admin API)",
		Example: `  hsmca ca serve --config ca.yaml
  hsmca ca serve --config ca.yaml --https-addr 0.0.0.0:443 --http-addr 0.0.0.0:80`,
	}
	cmd.AddCommand(newServeCmd(e))
	return cmd
}

// serveFlags override the config's listeners and resolver, and can turn
// Certificate Transparency on for the server profile.
type serveFlags struct {
	config    string
	httpsAddr string
	httpAddr  string
	resolver  string
	ctLogs    []string
	ctLogKeys []string
	ctMode    string
	pprof     string
}

func (f *serveFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.httpsAddr, "https-addr", "", "HTTPS listen `ADDR` for ACME and the admin API (default: the config's, 127.0.0.1:8443)")
	cmd.Flags().StringVar(&f.httpAddr, "http-addr", "", "plain HTTP listen `ADDR` for CRL, OCSP and AIA (default: the config's, 127.0.0.1:8080)")
	cmd.Flags().StringVar(&f.resolver, "resolver", "", "DNS server `HOST:PORT` for every ACME validation lookup (overrides acme.resolver)")
	cmd.Flags().StringArrayVar(&f.ctLogs, "ct-log", nil, "CT log submission `URL` (RFC 6962 add-pre-chain under it) added to the config's ct.logs; repeatable, paired in order with --ct-log-key; turns CT on for the server profile")
	cmd.Flags().StringArrayVar(&f.ctLogKeys, "ct-log-key", nil, "public key `FILE` (PEM or DER) of the --ct-log at the same position; repeatable")
	cmd.Flags().StringVar(&f.pprof, "pprof-addr", "", "serve Go's net/http/pprof profiles on `ADDR` (loopback only, e.g. 127.0.0.1:6060; off by default) for profiling under load")
	cmd.Flags().StringVar(&f.ctMode, "ct-mode", "", "CT `MODE` of the server profile: embed (no certificate without the SCT policy met; the default with --ct-log) or best-effort")
}

// ctFlagProfile is the profile whose CT mode the --ct-* flags set.
const ctFlagProfile = "server"

// ctOverride is what the --ct-* flags change in a config: logs added to
// ct.logs and the server profile's CT mode. The zero value changes nothing.
type ctOverride struct {
	logs []ct.LogConfig
	mode ca.CTMode
}

// ctOverride checks the --ct-* flags (pairing, key files, mode) without
// touching any config, so that quickstart can refuse bad flags before its
// first run creates anything.
func (f *serveFlags) ctOverride() (ctOverride, error) {
	if len(f.ctLogs) == 0 && len(f.ctLogKeys) == 0 && f.ctMode == "" {
		return ctOverride{}, nil
	}
	o := ctOverride{mode: ca.CTEmbed}
	switch ca.CTMode(f.ctMode) {
	case "":
	case ca.CTEmbed, ca.CTBestEffort:
		o.mode = ca.CTMode(f.ctMode)
	default:
		return ctOverride{}, usageError{withHint(fmt.Errorf("ct: --ct-mode %q: want embed or best-effort", f.ctMode),
			"embed: no certificate without the SCTs the profile needs; best-effort: issue anyway and report the logs that failed")}
	}
	keys := make([]string, len(f.ctLogKeys))
	for i, k := range f.ctLogKeys {
		if k == "" {
			keys[i] = k // FlagLogs names the log whose key is empty
			continue
		}
		abs, err := filepath.Abs(k)
		if err != nil {
			return ctOverride{}, usageError{withHint(fmt.Errorf("ct: --ct-log-key %s: %w", k, err), ctKeyHint)}
		}
		fi, err := os.Stat(abs)
		if err != nil {
			return ctOverride{}, usageError{withHint(fmt.Errorf("ct: --ct-log-key: %w", err), ctKeyHint)}
		}
		if !fi.Mode().IsRegular() {
			return ctOverride{}, usageError{withHint(fmt.Errorf("ct: --ct-log-key %s: not a regular file", k), ctKeyHint)}
		}
		keys[i] = abs
	}
	logs, err := ct.FlagLogs(f.ctLogs, keys)
	if err != nil {
		return ctOverride{}, usageError{withHint(err, "pass --ct-log URL --ct-log-key FILE once per log, each key right after its log")}
	}
	o.logs = logs
	return o, nil
}

// ctKeyHint is the hint of a --ct-log-key that cannot be read.
const ctKeyHint = "--ct-log-key names the log's public key file (PEM or DER), as the log operator publishes it"

// apply adds the override's logs to cfg.CT and sets the server profile's CT
// mode, keeping everything else the config says about that profile.
func (o ctOverride) apply(cfg *Config) error {
	if o.mode == "" {
		return nil
	}
	cfg.CT.Logs = append(cfg.CT.Logs, o.logs...)
	if len(cfg.CT.Logs) == 0 && cfg.CT.LogList == "" {
		return usageError{withHint(errors.New("ct: --ct-mode needs CT logs"), "add --ct-log URL --ct-log-key FILE, or configure ct.logs in the config file")}
	}
	if cfg.CA.Profiles == nil {
		cfg.CA.Profiles = map[string]ca.Profile{}
	}
	p, ok := cfg.CA.Profiles[ctFlagProfile]
	if !ok {
		// A profile entry keeps only the booleans it writes, so start from
		// the whole built-in profile rather than from an empty entry.
		p = ca.DefaultProfiles()[ctFlagProfile]
	}
	p.CT.Mode = o.mode
	cfg.CA.Profiles[ctFlagProfile] = p
	return nil
}

// stagedRegisterer collects the collectors a reloaded CA registers, so that
// they replace the running CA's collectors of the same names only once the
// reload has succeeded.
type stagedRegisterer struct{ cs []prometheus.Collector }

func (s *stagedRegisterer) Register(c prometheus.Collector) error {
	s.cs = append(s.cs, c)
	return nil
}

func (s *stagedRegisterer) MustRegister(cs ...prometheus.Collector) {
	s.cs = append(s.cs, cs...)
}

func (s *stagedRegisterer) Unregister(prometheus.Collector) bool { return false }

// commit swaps the staged collectors into reg; Unregister matches by
// descriptors, so it removes the previous CA's collectors of the same metrics.
func (s *stagedRegisterer) commit(reg prometheus.Registerer) error {
	for _, c := range s.cs {
		reg.Unregister(c)
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

func newServeCmd(e *env) *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve ACME, CRLs, OCSP, issuer certificates, health, metrics and the admin API",
		Long: `Runs the CA. It starts sealed: until custodians present M shares of the
issuing partition (` + "`hsmca hsm activate --server URL --share FILE`" + ` from
their own machines, or --socket PATH on this one), anything that needs a
signature answers 503 "CA awaits quorum (k of M)" with Retry-After, while CRLs
and OCSP keep serving what was signed last.

Listeners: HTTPS (server.https_addr) with ACME under /acme/ and the admin API
under /admin/ (mutual TLS with an operator certificate); plain HTTP
(server.http_addr) with CRLs, OCSP and issuer certificates at the paths of
ca.urls (/crl/NAME.crl, /ocsp, /aia/NAME.crt without them), /healthz and
/metrics; the admin unix socket (server.admin_socket, mode 0600).

The server's own TLS key (server.tls_key) is a plain 0600 file, outside the
HSM on purpose, so that it can serve while sealed.

Certificate Transparency: --ct-log URL --ct-log-key FILE (repeatable, paired
in order) add logs to the config's ct.logs and set the server profile's
ct.mode to embed (or --ct-mode best-effort), without editing the config.

Signals: SIGTERM or SIGINT stop accepting, finish requests in flight, seal and
close the store; SIGHUP re-reads the config's profiles and name policy, the
operator CA (server.operator_ca, applied to the next admin request even on an
open connection) and the TLS certificate (server.tls_cert and tls_key, new
file names included; listeners, ACME settings and issuers need a restart); a
failed reload keeps the running configuration.

--pprof-addr serves Go's profiles on a loopback address only: a loopback IP,
or a name whose every address is loopback.`,
		Example: `  hsmca ca serve --config ca.yaml
  hsmca ca serve --config ca.yaml --https-addr 0.0.0.0:443 --http-addr 0.0.0.0:80
  hsmca ca serve --config ca.yaml --resolver 127.0.0.1:5353   # validate against a test DNS
  # SCTs from a CT log embedded in every server-profile certificate
  hsmca ca serve --config ca.yaml --ct-log http://127.0.0.1:6962/2026 --ct-log-key log-pub.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := LoadConfig(f.config)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			r, err := startServe(e, cfg, f.config, f)
			if err != nil {
				return err
			}
			r.printReady(e)
			return r.run(ctx)
		},
	}
	addConfigFlag(cmd, &f.config)
	f.add(cmd)
	return cmd
}

// running is a started `ca serve`: what it opened, to close in order.
type running struct {
	cfg    *Config
	log    *slog.Logger
	m      hsm.Module
	st     *store.Store
	acme   *acme.Server
	srv    *server.Server
	quorum *partitionQuorum
	acmeURL,
	httpURL string
	socket string
	pprof  *http.Server
}

// newLogger makes the server's slog logger per the config.
func newLogger(e *env, sc ServerConfig) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(sc.LogLevel))
	opts := &slog.HandlerOptions{Level: lvl}
	if sc.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(e.stderr, opts))
	}
	return slog.New(slog.NewTextHandler(e.stderr, opts))
}

// issuingPartition names the partition whose quorum the server reports
// and activates: server.issuing_partition, else the default issuer's.
func issuingPartition(cfg *Config) string {
	if cfg.Server.IssuingPartition != "" {
		return cfg.Server.IssuingPartition
	}
	def := cfg.CA.DefaultIssuer
	for _, ic := range cfg.CA.Issuers {
		if def == "" || ic.Name == def {
			return ic.Partition
		}
	}
	return ""
}

// startServe opens the module (sealed), the store, the CA, ACME and the
// listeners. On error everything opened so far is closed again.
func startServe(e *env, cfg *Config, configPath string, f serveFlags) (_ *running, err error) {
	f.applyListeners(cfg)
	cto, err := f.ctOverride()
	if err != nil {
		return nil, err
	}
	if err := cto.apply(cfg); err != nil {
		return nil, err
	}
	// --pprof-addr is checked (and a name resolved) before anything opens;
	// the listener binds the resolved address at the end.
	var pprofAddr string
	if f.pprof != "" {
		if pprofAddr, err = pprofListenAddr(context.Background(), f.pprof, net.DefaultResolver.LookupIPAddr); err != nil {
			return nil, err
		}
	}
	log := newLogger(e, cfg.Server)
	r := &running{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			r.close()
		}
	}()
	if r.m, err = openModule(cfg.Path(cfg.Module)); err != nil {
		return nil, err
	}
	pname := issuingPartition(cfg)
	p, err := r.m.Partition(pname)
	if err != nil {
		return nil, fmt.Errorf("issuing partition %q: %w", pname, err)
	}
	r.quorum = &partitionQuorum{p: p}
	if r.st, err = openStore(cfg); err != nil {
		return nil, err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics, err := server.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	wrap := func(name string, s crypto.Signer) crypto.Signer { return metrics.CountingSigner(name, s) }
	c, err := openCA(cfg, r.m, r.st, caDeps{Logger: log, Registerer: reg, WrapSigner: wrap})
	if err != nil {
		return nil, err
	}
	cur := &atomic.Pointer[ca.CA]{}
	cur.Store(c)

	sc := cfg.Server
	retry := sc.RetryAfter.D()
	if retry == 0 {
		retry = 10 * time.Second
	}
	adapter := &acmeCA{cur: cur, quorum: r.quorum, metrics: metrics, retryAfter: retry}
	acfg, err := acmeConfig(cfg, c)
	if err != nil {
		return nil, err
	}
	r.acmeURL = acfg.BaseURL + "directory"
	if r.acme, err = acme.New(acfg, adapter, r.st, acme.Options{Logger: log, Resolver: f.resolver,
		OnPrune: func(st acme.PruneStats) {
			metrics.ObservePruned("order", st.Orders)
			metrics.ObservePruned("authz", st.Authzs)
			metrics.ObservePruned("cert", st.Certs)
		}}); err != nil {
		return nil, err
	}

	scfg := server.Config{
		HTTPSAddr:         sc.HTTPSAddr,
		HTTPAddr:          sc.HTTPAddr,
		TLSCertFile:       cfg.Path(sc.TLSCert),
		TLSKeyFile:        cfg.Path(sc.TLSKey),
		ACMEPrefix:        acfg.Prefix,
		CRLInterval:       sc.CRLInterval.D(),
		RetryAfter:        retry,
		ReadHeaderTimeout: sc.ReadHeaderTimeout.D(),
		ReadTimeout:       sc.ReadTimeout.D(),
		WriteTimeout:      sc.WriteTimeout.D(),
		IdleTimeout:       sc.IdleTimeout.D(),
		MaxHeaderBytes:    sc.MaxHeaderBytes,
		MaxBodyBytes:      sc.MaxBodyBytes,
		CRLFiles:          resolvePaths(cfg, sc.CRLFiles),
		IssuerFiles:       resolvePaths(cfg, sc.IssuerFiles),
	}
	if sc.AdminSocket != "-" {
		scfg.AdminSocket = cfg.Path(sc.AdminSocket)
		r.socket = scfg.AdminSocket
	}
	if sc.TLSCert == "" || sc.TLSKey == "" {
		return nil, withHint(errors.New("config: server.tls_cert and server.tls_key are required"),
			"issue the server a certificate with the server profile (quickstart does) and name the files in ca.yaml")
	}
	if scfg.OperatorRoots, err = operatorRoots(cfg); err != nil {
		return nil, err
	}
	// reload loads every part of the new configuration; what it changes
	// outside the server (the CA the ACME adapter uses, the CT metrics) is
	// left to Commit, which the server calls only once it has also loaded
	// the TLS files the new configuration names, so that a failure keeps
	// the running configuration whole.
	reload := func() (server.Reloaded, error) {
		ncfg, err := LoadConfig(configPath)
		if err != nil {
			return server.Reloaded{}, err
		}
		f.applyListeners(ncfg) // as at start, so that the comparison sees no change
		if err := checkReloadable(cfg, ncfg, log); err != nil {
			return server.Reloaded{}, err
		}
		if err := cto.apply(ncfg); err != nil {
			return server.Reloaded{}, err
		}
		roots, err := operatorRoots(ncfg)
		if err != nil {
			return server.Reloaded{}, err
		}
		if ncfg.Server.TLSCert == "" || ncfg.Server.TLSKey == "" {
			return server.Reloaded{}, errors.New("config: server.tls_cert and server.tls_key are required")
		}
		// The new CA's CT metrics replace the old ones in /metrics only
		// if it starts.
		staged := &stagedRegisterer{}
		nc, err := openCA(ncfg, r.m, r.st, caDeps{Logger: log, Registerer: staged, WrapSigner: wrap})
		if err != nil {
			return server.Reloaded{}, err
		}
		return server.Reloaded{
			CA: nc, OperatorRoots: roots,
			TLSCertFile: ncfg.Path(ncfg.Server.TLSCert), TLSKeyFile: ncfg.Path(ncfg.Server.TLSKey),
			Commit: func() error {
				if err := staged.commit(reg); err != nil {
					return fmt.Errorf("metrics: %w", err)
				}
				cur.Store(nc)
				return nil
			},
		}, nil
	}
	r.srv, err = server.New(scfg, server.Deps{
		CA: c, ACME: r.acme.Handler(), Quorum: r.quorum, Store: r.st, Logger: log,
		Metrics: metrics, Gatherer: reg, Reload: reload, EAB: eabAdmin{st: r.st},
	})
	if err != nil {
		return nil, err
	}
	adapter.revoked = r.srv.Revoked
	if err := r.srv.Start(); err != nil {
		r.srv = nil
		return nil, err
	}
	r.httpURL = "http://" + r.srv.HTTPAddr()
	if pprofAddr != "" {
		if r.pprof, _, err = startPprof(pprofAddr, log); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// operatorRoots reads server.operator_ca: the CA certificates that admin
// client certificates must chain to. nil without the setting (the server
// then uses the issuers' chains). A file without a certificate is an
// error, not a silent fall back to that default.
func operatorRoots(cfg *Config) ([]*x509.Certificate, error) {
	name := cfg.Server.OperatorCA
	if name == "" {
		return nil, nil
	}
	b, err := os.ReadFile(cfg.Path(name))
	if err != nil {
		return nil, fmt.Errorf("config: server.operator_ca: %w", err)
	}
	roots, err := ca.ParsePEMCertificates(b)
	if err != nil {
		return nil, fmt.Errorf("config: server.operator_ca %s: %w", name, err)
	}
	if len(roots) == 0 {
		return nil, withHint(fmt.Errorf("config: server.operator_ca %s: no PEM certificate in the file", name),
			"put the operator CA's certificate (PEM) there, or remove server.operator_ca to trust the issuers' chains")
	}
	return roots, nil
}

// Sampling rates while --pprof-addr is on: a blocking event of 10µs or more
// is always recorded in the block profile (shorter ones proportionally), and
// one mutex contention event in 10 in the mutex profile. Both stay off
// without the flag, so they cost nothing by default.
const (
	pprofBlockRateNs     = 10_000
	pprofMutexFraction   = 10
	pprofReadHeaderLimit = 10 * time.Second
)

// pprofLookupTimeout bounds the resolution of a --pprof-addr host name.
const pprofLookupTimeout = 10 * time.Second

// pprofListenAddr checks a --pprof-addr HOST:PORT and returns the literal
// address to listen on. The profiles show a CA's code paths and timings and
// the endpoints can make it spend CPU, so they are served on loopback only:
// a literal IP must be loopback, and a name (such as localhost) is resolved
// with lookup and accepted only if every address it resolves to is
// loopback. The listener then binds the first resolved address (IPv4
// first, as net.Listen would), so no second lookup can move it elsewhere.
func pprofListenAddr(ctx context.Context, addr string, lookup func(context.Context, string) ([]net.IPAddr, error)) (string, error) {
	const hint = "give a loopback IP address, such as 127.0.0.1:6060 or [::1]:6060"
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", usageError{withHint(fmt.Errorf("serve: --pprof-addr %q: want HOST:PORT", addr), hint)}
	}
	if host == "" {
		return "", usageError{withHint(fmt.Errorf("serve: --pprof-addr %q: no host means every interface; only a loopback address is allowed", addr), hint)}
	}
	if ip := net.ParseIP(host); ip != nil {
		if !ip.IsLoopback() {
			return "", usageError{withHint(fmt.Errorf("serve: --pprof-addr %q: %s is not a loopback address; only a loopback address is allowed", addr, ip), hint)}
		}
		return net.JoinHostPort(ip.String(), port), nil
	}
	ctx, cancel := context.WithTimeout(ctx, pprofLookupTimeout)
	defer cancel()
	ips, err := lookup(ctx, host)
	if err != nil {
		return "", usageError{withHint(fmt.Errorf("serve: --pprof-addr %q: resolve %s: %w", addr, host, err), hint)}
	}
	if len(ips) == 0 {
		return "", usageError{withHint(fmt.Errorf("serve: --pprof-addr %q: %s resolves to no address", addr, host), hint)}
	}
	var pick net.IP
	for _, a := range ips {
		if !a.IP.IsLoopback() {
			return "", usageError{withHint(fmt.Errorf("serve: --pprof-addr %q: %s resolves to %s, which is not loopback; only a loopback address is allowed", addr, host, a.IP), hint)}
		}
		if pick == nil || (pick.To4() == nil && a.IP.To4() != nil) {
			pick = a.IP
		}
	}
	return net.JoinHostPort(pick.String(), port), nil
}

// startPprof serves net/http/pprof on addr, a literal loopback address
// that pprofListenAddr returned. It returns the server and the address it
// listens on.
func startPprof(addr string, log *slog.Logger) (*http.Server, string, error) {
	host, _, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		// pprofListenAddr makes such addresses; anything else is a bug.
		return nil, "", fmt.Errorf("serve: pprof listener %q: not a literal loopback address", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("serve: pprof listener: %w", err)
	}
	runtime.SetBlockProfileRate(pprofBlockRateNs)
	runtime.SetMutexProfileFraction(pprofMutexFraction)
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: pprofReadHeaderLimit}
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("serve: pprof listener stopped", "err", err)
		}
	}()
	log.Info("serve: pprof profiles on loopback", "addr", ln.Addr().String())
	return hs, ln.Addr().String(), nil
}

func resolvePaths(cfg *Config, m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = cfg.Path(v)
	}
	return out
}

// acmeConfig completes the config's acme section: the base URL from the
// HTTPS address when none is set, and the CA's serverAuth profiles as ACME
// profiles (default "server") when none are listed.
func acmeConfig(cfg *Config, c *ca.CA) (acme.Config, error) {
	acfg := cfg.ACME
	if acfg.BaseURL == "" {
		host, port, err := net.SplitHostPort(cfg.Server.HTTPSAddr)
		if err != nil {
			return acfg, fmt.Errorf("config: server.https_addr %q: %w", cfg.Server.HTTPSAddr, err)
		}
		if port == "0" {
			return acfg, errors.New("config: server.https_addr needs an explicit port to derive acme.base_url")
		}
		if host == "" || host == "0.0.0.0" || host == "::" {
			host = "localhost"
		}
		acfg.BaseURL = "https://" + net.JoinHostPort(host, port) + "/acme/"
	}
	if !strings.HasSuffix(acfg.BaseURL, "/") {
		acfg.BaseURL += "/"
	}
	if acfg.IssueWorkers == 0 && usesCT(cfg) {
		acfg.IssueWorkers = ctIssueWorkers
	}
	if len(acfg.Profiles) == 0 {
		acfg.Profiles = map[string]string{}
		names := []string{}
		for name, p := range c.Profiles() {
			for _, eku := range p.ExtKeyUsages {
				if eku == "serverAuth" {
					acfg.Profiles[name] = p.Description
					names = append(names, name)
				}
			}
		}
		sort.Strings(names)
		if acfg.DefaultProfile == "" {
			if _, ok := acfg.Profiles[defaultACMEProfile]; ok {
				acfg.DefaultProfile = defaultACMEProfile
			} else if len(names) > 0 {
				acfg.DefaultProfile = names[0]
			}
		}
	}
	return acfg, nil
}

// ctIssueWorkers is the ACME finalize pool size when a profile uses CT and
// acme.issue_workers is unset. An issuance with CT holds its worker while the
// logs answer (about one checkpoint interval, typically 0.5 to 2s) and uses
// no CPU meanwhile, so the default pool of 4 would cap such a CA at a few
// orders per second whatever the CPU.
const ctIssueWorkers = 64

// usesCT reports whether any profile of cfg has CT on.
func usesCT(cfg *Config) bool {
	for _, p := range cfg.CA.EffectiveProfiles() {
		if p.CT.Mode != ca.CTOff {
			return true
		}
	}
	return false
}

// printReady tells the operator where the CA listens and that it is sealed.
func (r *running) printReady(e *env) {
	q, _ := r.quorum.Status()
	fmt.Fprintf(e.stdout, "hsmca ca serve: ACME directory %s\n", r.acmeURL)
	fmt.Fprintf(e.stdout, "hsmca ca serve: CRL, OCSP, AIA, /healthz, /metrics on %s\n", r.httpURL)
	if r.socket != "" {
		fmt.Fprintf(e.stdout, "hsmca ca serve: admin socket %s\n", r.socket)
	}
	if q.Active() {
		fmt.Fprintf(e.stdout, "hsmca ca serve: partition %s is active (%d of %d shares presented)\n", q.Partition, q.Presented, q.Threshold)
	} else {
		fmt.Fprintf(e.stdout, "hsmca ca serve: partition %s is %s: %s; custodians activate it with `hsmca hsm activate --socket PATH|--server URL --share FILE`\n",
			q.Partition, q.State, server.SealedDetail(q))
	}
}

// run serves until ctx ends (SIGTERM/SIGINT) or a listener fails; SIGHUP
// reloads. Then it shuts down in order.
func (r *running) run(ctx context.Context) error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			r.log.Info("hsmca: shutting down")
			break loop
		case <-hup:
			if err := r.srv.Reload(); err != nil {
				r.log.Error("hsmca: reload failed; keeping the running configuration", "err", err)
			}
		case err := <-r.srv.Errors():
			runErr = err
			break loop
		}
	}
	if err := r.shutdown(); err != nil && runErr == nil {
		runErr = err
	}
	return runErr
}

// shutdown stops the listeners (finishing requests in flight), seals,
// stops ACME's workers and closes the module and the store.
func (r *running) shutdown() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	if r.srv != nil {
		errs = append(errs, r.srv.Shutdown(ctx))
		r.srv = nil
	}
	r.close()
	return errors.Join(errs...)
}

// close releases what startServe opened (after the listeners stopped).
func (r *running) close() {
	if r.pprof != nil {
		r.pprof.Close()
		r.pprof = nil
	}
	if r.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		r.srv.Shutdown(ctx)
		cancel()
		r.srv = nil
	}
	if r.acme != nil {
		r.acme.Close()
		r.acme = nil
	}
	if r.m != nil {
		r.m.Close()
		r.m = nil
	}
	if r.st != nil {
		r.st.Close()
		r.st = nil
	}
}

// partitionQuorum implements server.Quorum over an hsm.Partition, mapping
// the module's errors onto the server's.
type partitionQuorum struct{ p hsm.Partition }

var _ server.Quorum = (*partitionQuorum)(nil)

func toQuorumStatus(st hsm.PartitionStatus) server.QuorumStatus {
	return server.QuorumStatus{Partition: st.Name, State: string(st.State), Presented: st.Presented,
		Threshold: st.Threshold, Shares: st.Shares, LockedUntil: st.LockedUntil}
}

func (q *partitionQuorum) Status() (server.QuorumStatus, error) {
	st, err := q.p.Status()
	return toQuorumStatus(st), err
}

func (q *partitionQuorum) AddShare(text []byte) (server.QuorumStatus, error) {
	s, err := hsm.DecodeText(string(text))
	if err != nil {
		// DecodeText's errors name lines and fields, never the value.
		return server.QuorumStatus{}, fmt.Errorf("%w: %v", server.ErrShareRefused, err)
	}
	st, err := q.p.AddShare(s)
	var (
		se     *hsm.ShareError
		locked *hsm.LockedError
	)
	switch {
	case err == nil:
		return toQuorumStatus(st), nil
	case errors.As(err, &se):
		return toQuorumStatus(st), fmt.Errorf("%w: %v", server.ErrShareRefused, err)
	case errors.Is(err, hsm.ErrDuplicateShare):
		return toQuorumStatus(st), fmt.Errorf("%w: share %d was presented already", server.ErrShareDuplicate, s.Index)
	case errors.As(err, &locked):
		return toQuorumStatus(st), fmt.Errorf("%w: %v", server.ErrLocked, err)
	}
	return toQuorumStatus(st), err
}

func (q *partitionQuorum) Seal() error { return q.p.Seal() }

// applyListeners puts the --https-addr and --http-addr overrides into cfg.
func (f *serveFlags) applyListeners(cfg *Config) {
	if f.httpsAddr != "" {
		cfg.Server.HTTPSAddr = f.httpsAddr
	}
	if f.httpAddr != "" {
		cfg.Server.HTTPAddr = f.httpAddr
	}
}

// checkReloadable compares the running configuration with the one a
// reload read. Issuers (and which one is the default, whose partition the
// server's quorum activates) are bound at start, so a reload that changes
// them is refused rather than half applied; the other sections a reload does not apply (module,
// store, listeners and server settings other than the operator CA and the
// TLS certificate, ACME) are named in a warning, so that an edit that has
// no effect yet does not go unnoticed.
func checkReloadable(cur, next *Config, log *slog.Logger) error {
	if !reflect.DeepEqual(cur.CA.Issuers, next.CA.Issuers) || cur.CA.DefaultIssuer != next.CA.DefaultIssuer {
		return withHint(errors.New("config: ca.issuers or ca.default_issuer changed; issuers are set up at start"),
			"restart `hsmca ca serve` to apply the new issuers, or undo the change and reload again")
	}
	var ignored []string
	if cur.Module != next.Module {
		ignored = append(ignored, "module")
	}
	if cur.Store != next.Store {
		ignored = append(ignored, "store")
	}
	cs, ns := cur.Server, next.Server
	cs.OperatorCA, ns.OperatorCA = "", ""
	cs.TLSCert, ns.TLSCert, cs.TLSKey, ns.TLSKey = "", "", "", ""
	if !reflect.DeepEqual(cs, ns) {
		ignored = append(ignored, "server (other than operator_ca, tls_cert and tls_key)")
	}
	if !reflect.DeepEqual(cur.ACME, next.ACME) {
		ignored = append(ignored, "acme")
	}
	if len(ignored) > 0 {
		log.Warn("reload: these sections changed but take effect only at the next restart", "sections", strings.Join(ignored, ", "))
	}
	return nil
}
