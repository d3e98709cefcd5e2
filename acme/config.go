package acme

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Config is the ACME server's configuration (the `acme:` section of the
// `ca serve` config). Every field has a usable zero value except BaseURL.
type Config struct {
	// BaseURL is the absolute URL under which Handler is reachable, e.g.
	// "https://ca.example:8443/acme/". All URLs the server hands out are
	// built from it. Required.
	BaseURL string `yaml:"base_url"`
	// Prefix is the path the handler serves under; default: the path of
	// BaseURL (usually "/acme/").
	Prefix string `yaml:"prefix"`
	// TermsOfService and Website go into the directory's meta.
	TermsOfService string `yaml:"terms_of_service"`
	Website        string `yaml:"website"`
	// CAAIdentities go into the directory's meta.
	CAAIdentities []string `yaml:"caa_identities"`
	// ExternalAccountRequired refuses new accounts without a valid EAB.
	ExternalAccountRequired bool `yaml:"external_account_required"`
	// Profiles maps profile names to descriptions (meta.profiles);
	// DefaultProfile is used when an order names none. Empty: no profiles
	// are advertised and orders carry none.
	Profiles       map[string]string `yaml:"profiles"`
	DefaultProfile string            `yaml:"default_profile"`
	// AllowValidityRequest lets orders carry notBefore/notAfter.
	AllowValidityRequest bool `yaml:"allow_validity_request"`
	// AuthzReuse is how long a valid authorization is reused for new orders
	// of the same account. Zero: 24h; negative: never reuse.
	AuthzReuse time.Duration `yaml:"authz_reuse"`
	// AuthzLifetime is how long a valid authorization stays valid (default 30 days).
	AuthzLifetime time.Duration `yaml:"authz_lifetime"`
	// OrderLifetime is how long a pending order lives (default 7 days).
	OrderLifetime time.Duration `yaml:"order_lifetime"`
	// Retention is how long orders and authorizations are kept after they
	// expired, and certificate links after the certificate expired, before
	// the pruner deletes them (default 168h; negative: keep everything
	// forever). Processing orders are never deleted. See PrunePolicy.
	Retention time.Duration `yaml:"retention"`
	// PruneInterval is the time between two pruning passes (default 10m;
	// the first runs a minute after start).
	PruneInterval time.Duration `yaml:"prune_interval"`
	// HTTP01Port and TLSALPN01Port are where validation connects
	// (defaults 80 and 443).
	HTTP01Port    int `yaml:"http01_port"`
	TLSALPN01Port int `yaml:"tlsalpn01_port"`
	// Resolver is the DNS server ("HOST:PORT") used for every validation
	// lookup; only it is asked (neither /etc/hosts nor the search list of
	// /etc/resolv.conf applies). Empty: the system resolver, asked for
	// absolute names so that its search list never applies.
	Resolver string `yaml:"resolver"`
	// ValidationTimeout bounds one validation attempt (default 10s);
	// ValidationRetries is how many more attempts follow a failed one
	// (default 2; the count is stored, so a restart grants none) and
	// ValidationRetryDelay the pause between them (1s).
	ValidationTimeout    time.Duration `yaml:"validation_timeout"`
	ValidationRetries    int           `yaml:"validation_retries"`
	ValidationRetryDelay time.Duration `yaml:"validation_retry_delay"`
	// ValidationWorkers is the size of the validation pool (default 16),
	// which bounds the validation attempts running at once, the first
	// attempts that challenge POSTs run inline included; IssueWorkers is
	// the size of the finalize pool (default 4).
	ValidationWorkers int `yaml:"validation_workers"`
	IssueWorkers      int `yaml:"issue_workers"`
	// RateLimits are per account and per client IP.
	RateLimits RateLimits `yaml:"rate_limits"`
	// MaxBodyBytes limits a request body (default 64 KiB).
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// MaxIdentifiers limits the identifiers of one order (default 100).
	MaxIdentifiers int `yaml:"max_identifiers"`
	// FinalizeWait is how long finalize waits for the CA before answering
	// "processing" (default 2s; negative: answer "processing" at once and
	// always issue in the background).
	FinalizeWait time.Duration `yaml:"finalize_wait"`
	// RetryAfter is what the server tells clients polling a processing
	// order or pending challenge (default 1s).
	RetryAfter time.Duration `yaml:"retry_after"`
	// RenewalStart and RenewalEnd bound the ARI suggested window
	// (RFC 9773), as fractions of the certificate's lifetime from its
	// start (defaults 2/3 and 5/6).
	RenewalStart float64 `yaml:"renewal_start"`
	RenewalEnd   float64 `yaml:"renewal_end"`
}

// RateLimits are token buckets: Rate requests per second sustained with
// Burst. Zero values mean the generous defaults; a negative Rate disables
// the limit.
type RateLimits struct {
	AccountRate  float64 `yaml:"account_rate"`  // default 100/s
	AccountBurst int     `yaml:"account_burst"` // default 500
	IPRate       float64 `yaml:"ip_rate"`       // default 1000/s
	IPBurst      int     `yaml:"ip_burst"`      // default 5000
	// NewOrderRate limits newOrder per account (default 50/s, burst 300).
	NewOrderRate  float64 `yaml:"new_order_rate"`
	NewOrderBurst int     `yaml:"new_order_burst"`
}

// Options are the non-configuration dependencies of a Server.
type Options struct {
	// Clock returns the current time (default time.Now).
	Clock func() time.Time
	// Logger receives errors and debug events (default: discard).
	Logger *slog.Logger
	// HTTPClient is used for http-01 (default: a client that dials the
	// validation address directly, does not follow redirects to other
	// ports than 80/443 and keeps no connections alive).
	HTTPClient *http.Client
	// Dialer dials validation connections (default net.Dialer).
	Dialer *net.Dialer
	// Resolver overrides Config.Resolver ("HOST:PORT").
	Resolver string
	// OnPrune, if set, receives the counts of every pruning pass (for
	// metrics).
	OnPrune func(PruneStats)
	// ClientIP extracts the client address for rate limits (default:
	// the host of r.RemoteAddr).
	ClientIP func(r *http.Request) string
}

func (c *Config) setDefaults() error {
	if c.BaseURL == "" {
		return errors.New("acme: config: base_url is required")
	}
	u, err := url.Parse(c.BaseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("acme: config: base_url %q is not an absolute http(s) URL", c.BaseURL)
	}
	if !strings.HasSuffix(c.BaseURL, "/") {
		c.BaseURL += "/"
	}
	if c.Prefix == "" {
		c.Prefix = u.Path
		if !strings.HasSuffix(c.Prefix, "/") {
			c.Prefix += "/"
		}
	}
	if !strings.HasPrefix(c.Prefix, "/") || !strings.HasSuffix(c.Prefix, "/") {
		return fmt.Errorf("acme: config: prefix %q must start and end with /", c.Prefix)
	}
	if c.DefaultProfile != "" {
		if _, ok := c.Profiles[c.DefaultProfile]; !ok {
			return fmt.Errorf("acme: config: default_profile %q is not in profiles", c.DefaultProfile)
		}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.AuthzReuse, 24*time.Hour)
	def(&c.AuthzLifetime, 30*24*time.Hour)
	def(&c.OrderLifetime, 7*24*time.Hour)
	def(&c.Retention, 7*24*time.Hour)
	if c.PruneInterval < 0 {
		return fmt.Errorf("acme: config: prune_interval %s must be positive (omit it for the default 10m)", c.PruneInterval)
	}
	def(&c.PruneInterval, 10*time.Minute)
	def(&c.ValidationTimeout, 10*time.Second)
	def(&c.ValidationRetryDelay, time.Second)
	def(&c.RetryAfter, time.Second)
	def(&c.FinalizeWait, 2*time.Second)
	if c.HTTP01Port == 0 {
		c.HTTP01Port = 80
	}
	if c.TLSALPN01Port == 0 {
		c.TLSALPN01Port = 443
	}
	if c.ValidationRetries == 0 {
		c.ValidationRetries = 2
	}
	if c.ValidationRetries < 0 {
		c.ValidationRetries = 0
	}
	if c.ValidationWorkers <= 0 {
		c.ValidationWorkers = 16
	}
	if c.IssueWorkers <= 0 {
		c.IssueWorkers = 4
	}
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = 64 << 10
	}
	if c.MaxIdentifiers <= 0 {
		c.MaxIdentifiers = 100
	}
	if c.RenewalStart == 0 {
		c.RenewalStart = 2.0 / 3
	}
	if c.RenewalEnd == 0 {
		c.RenewalEnd = 5.0 / 6
	}
	if c.RenewalStart < 0 || c.RenewalEnd > 1 || c.RenewalStart >= c.RenewalEnd {
		return errors.New("acme: config: renewal_start must be < renewal_end, both within 0..1")
	}
	rl := &c.RateLimits
	if rl.AccountRate == 0 {
		rl.AccountRate = 100
	}
	if rl.AccountBurst <= 0 {
		rl.AccountBurst = 500
	}
	if rl.IPRate == 0 {
		rl.IPRate = 1000
	}
	if rl.IPBurst <= 0 {
		rl.IPBurst = 5000
	}
	if rl.NewOrderRate == 0 {
		rl.NewOrderRate = 50
	}
	if rl.NewOrderBurst <= 0 {
		rl.NewOrderBurst = 300
	}
	if c.Resolver != "" {
		if _, _, err := net.SplitHostPort(c.Resolver); err != nil {
			return fmt.Errorf("acme: config: resolver %q: want HOST:PORT", c.Resolver)
		}
	}
	return nil
}
