//go:build cgo

package pkcs11

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThalesGroup/crypto11"
	p11 "github.com/miekg/pkcs11"

	"github.com/hsmca/hsmca/hsm"
	"github.com/hsmca/hsmca/hsm/quorum"
)

// poolWait bounds how long a signature waits for a free session.
const poolWait = 30 * time.Second

// Partition is one partition of a pkcs11 module: one token. It is safe for
// concurrent use.
type Partition struct {
	m    *Module
	name string
	coll *quorum.Collector

	// opMu serializes AddShare and Seal, so that a seal requested while a
	// quorum is being completed seals the resulting activation.
	opMu sync.Mutex

	// mu guards the activation state below. Signatures hold it for
	// reading; activation and sealing take it for writing, so a seal waits
	// for signatures in flight and none starts after it.
	mu     sync.RWMutex
	cfg    partitionConfig
	sel    *URI
	lib    *library
	slot   uint
	ctx    *crypto11.Context // nil while sealed
	pin    []byte            // the token PIN while active; wiped on seal
	gen    uint64            // counts activations, so a stale failure cannot seal a newer one
	gone   error             // why the token was found unavailable, until the next activation
	budget atomic.Int64      // signatures left in a per-operation activation
	opSigs int               // budget of the next per-operation activation

	smu     sync.Mutex
	signers map[string]crypto11.Signer // this activation's key handles, by key ID

	keyMu sync.Mutex // serializes key generation and destruction

	// commitFault, set only by tests, fails the named step of a
	// re-share's commit ("save": storing the settings; "restore-pin":
	// putting the previous PIN back) before the step runs.
	commitFault func(step string) error
}

var _ hsm.Partition = (*Partition)(nil)

func (m *Module) newPartition(pc partitionConfig) (*Partition, error) {
	sel, err := ParseURI(pc.TokenURI)
	if err != nil {
		return nil, err
	}
	p := &Partition{m: m, name: pc.Name, cfg: pc, sel: sel, opSigs: 1}
	p.coll, err = quorum.NewCollector(quorum.Config{
		Params:          p.params(pc),
		Window:          pc.CollectWindow,
		MaxFailures:     pc.MaxFailures,
		LockoutDuration: pc.LockoutDuration,
		Store:           m.lockouts,
		Clock:           m.opts.Clock,
		OnEvent: func(typ string, fields map[string]string) error {
			_, err := m.log.Append(typ, pc.Name, fields)
			return err
		},
	})
	if err != nil {
		return nil, fmt.Errorf("hsm/pkcs11: partition %s: %w", pc.Name, err)
	}
	return p, nil
}

func (p *Partition) params(pc partitionConfig) quorum.Params {
	return quorum.Params{
		Module: p.m.cfg.ModuleID, Partition: pc.Name, Generation: pc.Generation,
		Threshold: pc.Threshold, Shares: pc.Shares, Commitments: pc.Commitments,
	}
}

// Name returns the partition name.
func (p *Partition) Name() string { return p.name }

// TokenURI returns the URI of the partition's token as recorded at init.
func (p *Partition) TokenURI() string {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.cfg.TokenURI
}

// Unavailable returns why the token was last found unavailable (the
// partition sealed itself then), or nil.
func (p *Partition) Unavailable() error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.gone
}

// Status returns a snapshot of the partition.
func (p *Partition) Status() (hsm.PartitionStatus, error) {
	prog := p.coll.Progress()
	keys, err := p.Keys()
	if err != nil {
		return hsm.PartitionStatus{}, err
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	st := hsm.PartitionStatus{
		Name: p.name, Policy: p.cfg.Policy, Threshold: p.cfg.Threshold, Shares: p.cfg.Shares,
		Presented: prog.Presented, CollectingUntil: prog.CollectingUntil,
		LockedUntil: prog.LockedUntil, FailedShares: prog.FailedShares,
		Keys: len(keys), SignaturesLeft: -1, Generation: p.cfg.Generation,
	}
	switch {
	case p.ctx != nil:
		st.State = hsm.StateActive
		st.Presented = p.cfg.Threshold
		st.CollectingUntil = time.Time{}
		if p.cfg.Policy == hsm.PolicyPerOperation {
			st.SignaturesLeft = int(max(p.budget.Load(), 0))
		}
	case prog.Presented > 0:
		st.State = hsm.StateCollecting
	default:
		st.State = hsm.StateSealed
	}
	return st, nil
}

// AddShare presents one custodian share (see hsm.Partition). The share that
// completes the quorum recovers the secret, derives the PIN and logs in to
// the token; if the token refuses or cannot be reached the partition stays
// sealed, the error says why, and the shares must be presented again.
// A share presented to an active partition is ignored.
func (p *Partition) AddShare(s hsm.Share) (hsm.PartitionStatus, error) {
	p.opMu.Lock()
	defer p.opMu.Unlock()
	p.mu.RLock()
	active := p.ctx != nil
	p.mu.RUnlock()
	if active {
		st, err := p.Status()
		return st, err
	}
	prog, err := p.coll.AddShare(s)
	if err != nil {
		st, serr := p.Status()
		if serr != nil {
			return st, errors.Join(err, serr)
		}
		return st, err
	}
	if prog.Secret != nil {
		err = p.activate(prog.Secret)
		clear(prog.Secret)
	}
	st, serr := p.Status()
	if err == nil {
		err = serr
	}
	return st, err
}

// activate logs in to the token with the PIN derived from secret.
func (p *Partition) activate(secret []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ctx != nil {
		return nil
	}
	pin, err := derivePIN(secret, p.m.cfg.ModuleID, &p.cfg)
	if err != nil {
		return err
	}
	lib, err := p.m.library(p.sel)
	if err != nil {
		clear(pin)
		return p.activationFailed(err)
	}
	slot, _, err := lib.locate(p.sel)
	if err != nil {
		clear(pin)
		return p.activationFailed(err)
	}
	owner := p.owner()
	if err := claimToken(lib.path, slot, owner); err != nil {
		clear(pin)
		return p.activationFailed(err)
	}
	slotNum := int(slot)
	c11 := &crypto11.Config{
		Path: lib.path, SlotNumber: &slotNum, Pin: pinString(pin),
		MaxSessions: p.m.opts.MaxSessions, PoolWaitTimeout: poolWait,
	}
	ctx, err := crypto11.Configure(c11)
	c11.Pin = ""
	if err != nil {
		clear(pin)
		unclaimToken(lib.path, slot, owner)
		if isCode(err, p11.CKR_PIN_INCORRECT) {
			err = fmt.Errorf("hsm/pkcs11: partition %s: the token refused the PIN recovered from the shares (was its PIN changed or the token re-initialized outside hsmca?)", p.name)
		} else {
			err = fmt.Errorf("hsm/pkcs11: partition %s: log in to the token: %w", p.name, err)
		}
		return p.activationFailed(err)
	}
	p.lib, p.slot, p.ctx, p.pin = lib, slot, ctx, pin
	p.gen++
	p.gone = nil
	p.signers = nil
	if p.cfg.Policy == hsm.PolicyPerOperation {
		p.budget.Store(int64(p.opSigs))
		p.opSigs = 1
	}
	fields := map[string]string{"generation": strconv.Itoa(p.cfg.Generation), "token": p.sel.TokenURI().String()}
	if p.cfg.Policy == hsm.PolicyPerOperation {
		fields["signatures"] = strconv.FormatInt(p.budget.Load(), 10)
	}
	if _, err := p.m.log.Append("activate", p.name, fields); err != nil {
		p.sealLocked("audit failed")
		return fmt.Errorf("hsm/pkcs11: partition %s: activation not audited, sealed again: %w", p.name, err)
	}
	return nil
}

func (p *Partition) activationFailed(err error) error {
	_, aerr := p.m.log.Append("activate-failed", p.name, map[string]string{"reason": err.Error()})
	return errors.Join(err, aerr)
}

// owner names this partition object for token claims.
func (p *Partition) owner() string {
	return fmt.Sprintf("%s of module %s (%s)", p.name, p.m.cfg.ModuleID, p.m.dir)
}

// SetOperationSignatures sets the signature budget of the next activation
// of a per-operation partition (default 1).
func (p *Partition) SetOperationSignatures(n int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cfg.Policy != hsm.PolicyPerOperation {
		return fmt.Errorf("hsm/pkcs11: partition %s is online; only a per-operation partition has a signature budget", p.name)
	}
	if n < 1 {
		return fmt.Errorf("hsm/pkcs11: signature budget %d must be at least 1", n)
	}
	p.opSigs = n
	return nil
}

// Seal logs out of the token, closes every session, wipes the PIN and drops
// presented shares. Sealing a sealed partition is not an error.
func (p *Partition) Seal() error {
	p.opMu.Lock()
	defer p.opMu.Unlock()
	p.coll.Reset()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ctx == nil {
		return nil
	}
	return p.sealLocked("requested")
}

// sealLocked closes the activation; p.mu must be held for writing.
func (p *Partition) sealLocked(reason string) error {
	err := p.ctx.Close() // waits for sessions in use, closes them
	p.lib.logoutAll(p.slot)
	unclaimToken(p.lib.path, p.slot, p.owner())
	clear(p.pin)
	p.pin, p.ctx = nil, nil
	p.smu.Lock()
	p.signers = nil
	p.smu.Unlock()
	p.budget.Store(0)
	_, aerr := p.m.log.Append("seal", p.name, map[string]string{"reason": reason})
	if err != nil {
		err = fmt.Errorf("hsm/pkcs11: partition %s: close token context: %w", p.name, err)
	}
	return errors.Join(err, aerr)
}

// tokenFailed seals the activation gen after a library error that says the
// token went away (removed, restarted, sessions invalidated).
func (p *Partition) tokenFailed(gen uint64, cause error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ctx == nil || p.gen != gen {
		return
	}
	p.gone = fmt.Errorf("%w: %v", ErrTokenUnavailable, cause)
	if err := p.sealLocked("token unavailable: " + cause.Error()); err != nil {
		p.m.opts.Logger.Warn("hsm/pkcs11: sealing after token failure", "partition", p.name, "err", err)
	}
}

// sealedErr is the error of an operation refused while sealed; it wraps
// hsm.ErrSealed and, if the token was lost, ErrTokenUnavailable.
func (p *Partition) sealedErr() error {
	if p.gone != nil {
		return fmt.Errorf("%w (%w)", hsm.ErrSealed, p.gone)
	}
	return fmt.Errorf("%w: %s", hsm.ErrSealed, p.name)
}

// Reshare makes a new share set (n shares, threshold m) and puts it in
// force at once: PrepareReshare, then Commit. It returns the new shares
// exactly when they are in force; on an error the current shares still
// work.
func (p *Partition) Reshare(n, m int) ([]hsm.Share, error) {
	pr, err := p.PrepareReshare(n, m)
	if err != nil {
		return nil, err
	}
	defer pr.Discard()
	if err := pr.Commit(); err != nil {
		return nil, err
	}
	return pr.Shares(), nil
}

var _ hsm.StagedResharer = (*Partition)(nil)

// PrepareReshare deals a new share set (n shares, threshold m) with a new
// secret and derives the token PIN it stands for, without changing
// anything: the token keeps its PIN and the module its settings until the
// returned set's Commit. Unlike the soft backend the secret itself is new,
// so once committed the previous shares cannot even recompute a PIN that
// logs in. Requires active.
func (p *Partition) PrepareReshare(n, m int) (hsm.PendingReshare, error) {
	o := hsm.InitOptions{Partition: p.name, Shares: n, Threshold: m, Policy: hsm.PolicyOnline}
	if err := validateInit(&o); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ctx == nil {
		return nil, p.sealedErr()
	}
	dealing, err := quorum.Deal(p.m.opts.Rand, nil, n, m)
	if err != nil {
		return nil, fmt.Errorf("hsm/pkcs11: %w", err)
	}
	defer clear(dealing.Secret)
	next := p.cfg
	next.Shares, next.Threshold, next.Generation, next.Commitments = n, m, p.cfg.Generation+1, dealing.Commitments
	newPIN, err := derivePIN(dealing.Secret, p.m.cfg.ModuleID, &next)
	if err != nil {
		return nil, err
	}
	shares := make([]hsm.Share, n)
	for i := range shares {
		shares[i] = hsm.Share{Module: p.m.cfg.ModuleID, Partition: p.name, Generation: next.Generation,
			Index: i + 1, Threshold: m, Value: dealing.Values[i]}
	}
	return &pendingReshare{p: p, base: p.cfg.Generation, gen: p.gen, next: next, pin: newPIN, shares: shares}, nil
}

// pendingReshare is a share set dealt by PrepareReshare; it implements
// hsm.PendingReshare. Its fields are guarded by the partition's mu.
type pendingReshare struct {
	p      *Partition
	base   int    // the generation in force when it was dealt
	gen    uint64 // the activation it was dealt in (Partition.gen)
	next   partitionConfig
	pin    []byte // the token PIN the new secret derives
	shares []hsm.Share
	done   bool
}

func (r *pendingReshare) Shares() []hsm.Share { return r.shares }

func (r *pendingReshare) Discard() {
	r.p.mu.Lock()
	defer r.p.mu.Unlock()
	if !r.done {
		clear(r.pin)
		r.done = true
	}
}

// Commit records the re-share in the audit log, changes the token's PIN to
// the new one and stores the new settings; the previous shares stop
// working. It fails if the partition is sealed, or was sealed and
// activated again, or re-shared since PrepareReshare. An error means
// nothing changed (the PIN is put back if the settings could not be
// stored), except that the audit log then holds the reshare record
// followed by a commit-failed record. The one exception wraps
// hsm.ErrReshareIncomplete: the PIN changed and could not be put back; its
// commit-failed record carries result=incomplete.
func (r *pendingReshare) Commit() error {
	p := r.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if r.done {
		return errors.New("hsm/pkcs11: this re-share was committed or discarded already")
	}
	if p.ctx == nil {
		return p.sealedErr()
	}
	if p.gen != r.gen {
		return fmt.Errorf("hsm/pkcs11: partition %s was sealed and activated again since this re-share was dealt", p.name)
	}
	if p.cfg.Generation != r.base {
		return fmt.Errorf("hsm/pkcs11: partition %s was re-shared since this re-share was dealt", p.name)
	}
	ev, err := p.m.log.Append("reshare", p.name, map[string]string{
		"generation": strconv.Itoa(r.next.Generation), "shares": strconv.Itoa(r.next.Shares), "threshold": strconv.Itoa(r.next.Threshold),
		"previous_generation": strconv.Itoa(r.base),
	})
	if err != nil {
		return fmt.Errorf("hsm/pkcs11: reshare of %s not audited, so not done (the current shares still work): %w", p.name, err)
	}
	if err := r.commitLocked(); err != nil {
		incomplete := errors.Is(err, hsm.ErrReshareIncomplete)
		fields := map[string]string{"seq": strconv.FormatUint(ev.Seq, 10), "event": "reshare", "reason": err.Error()}
		if incomplete {
			fields["result"] = "incomplete"
		}
		if _, aerr := p.m.log.Append("commit-failed", p.name, fields); aerr != nil {
			p.m.opts.Logger.Error("hsm/pkcs11: a re-share failed and the failure could not be recorded", "partition", p.name, "err", err, "audit_err", aerr)
		}
		if incomplete {
			return fmt.Errorf("hsm/pkcs11: reshare of %s incomplete: the token's PIN changed to the new shares' and the previous PIN could not be put back; keep both share sets: %w", p.name, err)
		}
		return fmt.Errorf("hsm/pkcs11: reshare of %s (not done; the current shares still work): %w", p.name, err)
	}
	r.done = true
	if err := p.coll.SetParams(p.params(r.next)); err != nil {
		// Cannot happen for a fresh dealing; the new set is in force, so
		// sealing is the safe way out: activation then uses the stored
		// settings.
		p.m.opts.Logger.Error("hsm/pkcs11: re-shared partition's quorum parameters refused; sealing", "partition", p.name, "err", err)
		p.sealLocked("re-share parameters refused")
	}
	return nil
}

// commitLocked changes the token PIN and stores the new settings, putting
// the previous PIN back if the settings cannot be stored. p.mu is held.
func (r *pendingReshare) commitLocked() error {
	p := r.p
	if err := p.lib.setPINLoggedIn(p.slot, p.pin, r.pin); err != nil {
		return err
	}
	err := p.fault("save")
	if err == nil {
		err = p.m.savePartition(r.next)
	}
	if err != nil {
		rerr := p.fault("restore-pin")
		if rerr == nil {
			rerr = p.lib.setPINLoggedIn(p.slot, r.pin, p.pin)
		}
		if rerr != nil {
			p.m.opts.Logger.Error("hsm/pkcs11: reshare: could not restore the previous PIN", "partition", p.name, "err", rerr)
			// The token answers to the new PIN now; a later re-share in
			// this activation changes it from there.
			clear(p.pin)
			p.pin, r.pin, r.done = r.pin, nil, true
			return fmt.Errorf("%w: %w; and the previous PIN could not be put back (%v): the token answers to the new shares' PIN while the module's settings still name the previous set", hsm.ErrReshareIncomplete, err, rerr)
		}
		return err
	}
	clear(p.pin)
	p.pin, r.pin = r.pin, nil
	p.cfg = r.next
	return nil
}

// fault is commitFault's error for step, or nil.
func (p *Partition) fault(step string) error {
	if p.commitFault == nil {
		return nil
	}
	return p.commitFault(step)
}

// TransportKey is not supported: keys on a PKCS#11 token are generated
// non-extractable and never leave it, wrapped or not.
func (p *Partition) TransportKey() (string, error) {
	return "", fmt.Errorf("%w: hsm/pkcs11: keys on a PKCS#11 token are non-extractable, so the token cannot receive or send wrapped keys; back it up with the token vendor's own tools", hsm.ErrUnsupported)
}

// ExportKey refuses: every key of this backend is non-extractable
// (CKA_EXTRACTABLE false) and stays on the token.
func (p *Partition) ExportKey(idOrLabel, transportKey string) ([]byte, error) {
	info, err := p.Key(idOrLabel)
	if err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("%w: hsm/pkcs11: key %s was generated on the token with CKA_EXTRACTABLE=false and cannot leave it", hsm.ErrNotExportable, info.ID)
}

// ImportKey is not supported (see TransportKey).
func (p *Partition) ImportKey(blob []byte) (hsm.KeyInfo, error) {
	return hsm.KeyInfo{}, fmt.Errorf("%w: hsm/pkcs11: importing wrapped keys into a PKCS#11 token is not supported; generate the key on the token", hsm.ErrUnsupported)
}
