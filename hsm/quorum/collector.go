package quorum

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hsmca/hsmca/hsm"
)

// Defaults used when a Config field is zero.
const (
	DefaultWindow          = 15 * time.Minute
	DefaultMaxFailures     = 5
	DefaultLockoutDuration = 15 * time.Minute
)

// Params says which shares a partition accepts: those of this module,
// partition and generation, with this threshold, verified against these
// commitments.
type Params struct {
	Module      string
	Partition   string
	Generation  int
	Threshold   int // M
	Shares      int // N
	Commitments []byte
}

func (p Params) validate() error {
	if p.Module == "" || p.Partition == "" {
		return errors.New("quorum: params need a module and a partition")
	}
	if p.Generation < 1 {
		return errors.New("quorum: generation must be at least 1")
	}
	if err := checkNM(p.Shares, p.Threshold); err != nil {
		return err
	}
	m, err := ParseCommitments(p.Commitments)
	if err != nil {
		return err
	}
	if m != p.Threshold {
		return fmt.Errorf("quorum: commitments are for threshold %d, params say %d", m, p.Threshold)
	}
	return nil
}

// LockoutState is what survives a restart: bad shares counted in the
// current failure window and the lockout, if any.
type LockoutState struct {
	Failures     int       `json:"failures"`
	WindowStart  time.Time `json:"window_start,omitzero"`
	LockedUntil  time.Time `json:"locked_until,omitzero"`
	LastFailedAt time.Time `json:"last_failed_at,omitzero"`
}

// LockoutStore persists LockoutState per partition. BoltLockoutStore is the
// bbolt implementation; a backend may provide its own.
type LockoutStore interface {
	LoadLockout(partition string) (LockoutState, error)
	SaveLockout(partition string, st LockoutState) error
}

// Event types reported to Config.OnEvent; they are hsm.AuditEvent types.
const (
	EventShareAccepted = "share-accepted"
	EventShareRejected = "share-rejected"
	EventLockout       = "lockout"
)

// Config configures a Collector. Zero values of optional fields are usable.
type Config struct {
	Params Params
	// Window is how long presented shares are kept before the quorum is
	// reached (default 15 minutes).
	Window time.Duration
	// MaxFailures bad shares within LockoutDuration of the first one lock
	// the partition for LockoutDuration (defaults 5 and 15 minutes).
	MaxFailures     int
	LockoutDuration time.Duration
	// Store persists the lockout state; required.
	Store LockoutStore
	// Clock defaults to time.Now.
	Clock func() time.Time
	// OnEvent, if set, is called (under the collector's lock) for every
	// accepted or rejected share and every lockout, with fields that never
	// hold a secret. An error from it fails the AddShare call: a module
	// that cannot audit does not accept shares.
	OnEvent func(typ string, fields map[string]string) error
}

// Progress is the collector's state after a call.
type Progress struct {
	Presented       int // k, valid distinct shares presented so far
	Threshold       int // M
	CollectingUntil time.Time
	LockedUntil     time.Time
	FailedShares    int
	// Secret is set, once, by the AddShare call that completes the quorum.
	// The collector keeps no copy of it or of the shares.
	Secret []byte
}

// Collector gathers the shares of one partition until M valid, distinct
// ones recover the secret. It is safe for concurrent use.
type Collector struct {
	mu       sync.Mutex
	cfg      Config
	params   Params
	shares   map[int][]byte
	deadline time.Time
	lock     LockoutState
}

// NewCollector validates cfg and loads the partition's lockout state.
func NewCollector(cfg Config) (*Collector, error) {
	if err := cfg.Params.validate(); err != nil {
		return nil, err
	}
	if cfg.Store == nil {
		return nil, errors.New("quorum: a lockout store is required")
	}
	if cfg.Window < 0 || cfg.LockoutDuration < 0 || cfg.MaxFailures < 0 {
		return nil, errors.New("quorum: negative window, lockout duration or failure count")
	}
	if cfg.Window == 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.MaxFailures == 0 {
		cfg.MaxFailures = DefaultMaxFailures
	}
	if cfg.LockoutDuration == 0 {
		cfg.LockoutDuration = DefaultLockoutDuration
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	st, err := cfg.Store.LoadLockout(cfg.Params.Partition)
	if err != nil {
		return nil, fmt.Errorf("quorum: load lockout state: %w", err)
	}
	return &Collector{cfg: cfg, params: cfg.Params, lock: st}, nil
}

// SetParams replaces what the collector accepts (after a re-share) and
// drops any presented shares. The lockout state is kept.
func (c *Collector) SetParams(p Params) error {
	if err := p.validate(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.params = p
	c.dropShares()
	return nil
}

// Reset drops presented shares (on seal).
func (c *Collector) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropShares()
}

func (c *Collector) dropShares() {
	for _, v := range c.shares {
		clear(v)
	}
	c.shares = nil
	c.deadline = time.Time{}
}

// Progress returns the current state without presenting a share.
func (c *Collector) Progress() Progress {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expire(c.cfg.Clock())
	return c.progress()
}

func (c *Collector) progress() Progress {
	return Progress{
		Presented:       len(c.shares),
		Threshold:       c.params.Threshold,
		CollectingUntil: c.deadline,
		LockedUntil:     c.lock.LockedUntil,
		FailedShares:    c.lock.Failures,
	}
}

// expire forgets shares past the collecting window, an ended lockout and
// a failure window that has run out. Changes to the lockout state are
// in memory only; the next save persists them.
func (c *Collector) expire(now time.Time) {
	if len(c.shares) > 0 && !now.Before(c.deadline) {
		c.dropShares()
	}
	if !c.lock.LockedUntil.IsZero() && !now.Before(c.lock.LockedUntil) {
		c.lock = LockoutState{}
	}
	if c.lock.LockedUntil.IsZero() && c.lock.Failures > 0 && !now.Before(c.lock.WindowStart.Add(c.cfg.LockoutDuration)) {
		c.lock = LockoutState{}
	}
}

// Locked returns a *hsm.LockedError while the partition refuses shares.
func (c *Collector) Locked() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expire(c.cfg.Clock())
	return c.lockedErr()
}

func (c *Collector) lockedErr() error {
	if c.lock.LockedUntil.IsZero() {
		return nil
	}
	return &hsm.LockedError{Partition: c.params.Partition, Until: c.lock.LockedUntil}
}

// AddShare presents one share. It refuses, in this order: while locked out
// (*hsm.LockedError); a share of another module, partition, generation or
// threshold (*hsm.ShareError with WrongModule); an index out of range or a
// value that fails verification against the commitments (*hsm.ShareError);
// a share whose index was presented already (hsm.ErrDuplicateShare, not
// counted as a failure). Every *hsm.ShareError counts towards the lockout.
// The call that completes the quorum returns Progress.Secret.
func (c *Collector) AddShare(s hsm.Share) (Progress, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.cfg.Clock()
	c.expire(now)
	if err := c.lockedErr(); err != nil {
		return c.progress(), err
	}
	if serr := c.check(s); serr != nil {
		return c.fail(now, serr)
	}
	if _, dup := c.shares[s.Index]; dup {
		return c.progress(), fmt.Errorf("%w (share %d)", hsm.ErrDuplicateShare, s.Index)
	}
	if err := c.event(EventShareAccepted, map[string]string{"index": fmt.Sprint(s.Index), "generation": fmt.Sprint(s.Generation)}); err != nil {
		return c.progress(), err
	}
	if c.shares == nil {
		c.shares = make(map[int][]byte, c.params.Threshold)
		c.deadline = now.Add(c.cfg.Window)
	}
	c.shares[s.Index] = append([]byte(nil), s.Value...)
	p := c.progress()
	if len(c.shares) < c.params.Threshold {
		return p, nil
	}
	secret, err := Recover(c.params.Commitments, c.shares)
	c.dropShares()
	if err != nil {
		// Each share verified on its own, so this means the stored
		// commitments are inconsistent; there is no share to blame.
		return c.progress(), fmt.Errorf("quorum: partition %s: %w", c.params.Partition, err)
	}
	p = c.progress()
	p.Presented = c.params.Threshold
	p.Secret = secret
	return p, nil
}

// check returns the reason a share is refused, or nil.
func (c *Collector) check(s hsm.Share) *hsm.ShareError {
	p := c.params
	wrong := func(reason string) *hsm.ShareError {
		return &hsm.ShareError{Index: s.Index, Reason: reason, WrongModule: true}
	}
	switch {
	case s.Module != p.Module:
		return wrong(fmt.Sprintf("belongs to module %q, not %q", s.Module, p.Module))
	case s.Partition != p.Partition:
		return wrong(fmt.Sprintf("belongs to partition %q, not %q", s.Partition, p.Partition))
	case s.Generation != p.Generation:
		return wrong(fmt.Sprintf("is of share generation %d, the partition's shares are generation %d (re-shared)", s.Generation, p.Generation))
	case s.Threshold != p.Threshold:
		return wrong(fmt.Sprintf("says threshold %d, the partition's is %d", s.Threshold, p.Threshold))
	case s.Index < 1 || s.Index > p.Shares:
		return &hsm.ShareError{Index: s.Index, Reason: fmt.Sprintf("index out of range 1..%d", p.Shares)}
	}
	if err := VerifyShare(p.Commitments, s.Index, s.Value); err != nil {
		reason := "does not match the partition's commitments (altered or mistyped value)"
		if !errors.Is(err, ErrShareMismatch) {
			reason = "malformed value"
		}
		return &hsm.ShareError{Index: s.Index, Reason: reason}
	}
	return nil
}

// fail counts a bad share, persists the count and locks out at the limit.
func (c *Collector) fail(now time.Time, serr *hsm.ShareError) (Progress, error) {
	if c.lock.Failures == 0 {
		c.lock.WindowStart = now
	}
	c.lock.Failures++
	c.lock.LastFailedAt = now
	locked := c.lock.Failures >= c.cfg.MaxFailures
	if locked {
		c.lock.LockedUntil = now.Add(c.cfg.LockoutDuration)
		c.dropShares()
	}
	if err := c.cfg.Store.SaveLockout(c.params.Partition, c.lock); err != nil {
		return c.progress(), fmt.Errorf("quorum: save lockout state: %w", err)
	}
	fields := map[string]string{"index": fmt.Sprint(serr.Index), "reason": serr.Reason, "failures": fmt.Sprint(c.lock.Failures)}
	if err := c.event(EventShareRejected, fields); err != nil {
		return c.progress(), err
	}
	if locked {
		until := c.lock.LockedUntil.UTC().Format(time.RFC3339)
		if err := c.event(EventLockout, map[string]string{"until": until, "failures": fmt.Sprint(c.lock.Failures)}); err != nil {
			return c.progress(), err
		}
	}
	return c.progress(), serr
}

func (c *Collector) event(typ string, fields map[string]string) error {
	if c.cfg.OnEvent == nil {
		return nil
	}
	if err := c.cfg.OnEvent(typ, fields); err != nil {
		return fmt.Errorf("quorum: record %s: %w", typ, err)
	}
	return nil
}
