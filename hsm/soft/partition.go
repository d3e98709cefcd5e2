package soft

import (
	"bytes"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"filippo.io/age"
	"github.com/hsmca/hsmca/hsm"
	"github.com/hsmca/hsmca/hsm/quorum"
	bolt "go.etcd.io/bbolt"
)

// partitionRecord is a partition as stored. Nothing in it is secret: the
// master key and the transport identity are wrapped.
type partitionRecord struct {
	Name               string        `json:"name"`
	Order              int           `json:"order"`
	Policy             hsm.Policy    `json:"policy"`
	Threshold          int           `json:"threshold"`
	Shares             int           `json:"shares"`
	Generation         int           `json:"generation"`
	Commitments        []byte        `json:"commitments"`
	KEKSalt            []byte        `json:"kek_salt"`
	KCV                []byte        `json:"kcv"`
	WrappedMaster      []byte        `json:"wrapped_master"`
	TransportRecipient string        `json:"transport_recipient"`
	WrappedTransport   []byte        `json:"wrapped_transport"`
	CollectWindow      time.Duration `json:"collect_window"`
	MaxFailures        int           `json:"max_failures"`
	LockoutDuration    time.Duration `json:"lockout_duration"`
	Created            time.Time     `json:"created"`
}

// masterAD binds the wrapped master key to the partition's identity and
// policy, so that editing the record (say, per-operation → online) makes
// activation fail.
func (r *partitionRecord) masterAD(module string) []byte {
	return lp([]byte("hsmca soft master v1"), module, r.Name, string(r.Policy),
		fmt.Sprint(r.Generation), fmt.Sprint(r.Threshold), fmt.Sprint(r.Shares), r.TransportRecipient)
}

// wrapMaster sets the record's generation-dependent fields for dealing d:
// commitments, KEK salt, key check value and the wrapped master key.
func (r *partitionRecord) wrapMaster(rnd io.Reader, module string, d *quorum.Dealing, master []byte) error {
	salt := make([]byte, keySize)
	if _, err := io.ReadFull(rnd, salt); err != nil {
		return fmt.Errorf("soft: random salt: %w", err)
	}
	kek, err := deriveKEK(d.Secret, salt, module, r.Name, r.Generation)
	if err != nil {
		return fmt.Errorf("soft: derive KEK: %w", err)
	}
	defer clear(kek)
	r.Commitments, r.KEKSalt, r.KCV = d.Commitments, salt, keyCheckValue(kek)
	r.WrappedMaster, err = seal(rnd, kek, master, r.masterAD(module))
	return err
}

// unwrapMaster recovers the master key from the secret.
func (r *partitionRecord) unwrapMaster(module string, secret []byte) ([]byte, error) {
	kek, err := deriveKEK(secret, r.KEKSalt, module, r.Name, r.Generation)
	if err != nil {
		return nil, err
	}
	defer clear(kek)
	if err := checkKCV(kek, r.KCV); err != nil {
		return nil, err
	}
	mk, err := open(kek, r.WrappedMaster, r.masterAD(module))
	if err != nil {
		return nil, fmt.Errorf("master key: %w", err)
	}
	return mk, nil
}

func (r *partitionRecord) transportAD() []byte {
	return lp([]byte("hsmca soft transport v1"), r.Name, r.TransportRecipient)
}

func (r *partitionRecord) newTransport(rnd io.Reader, master []byte) error {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return fmt.Errorf("soft: transport key: %w", err)
	}
	r.TransportRecipient = id.Recipient().String()
	return r.wrapTransport(rnd, master, id)
}

// wrapTransport wraps the partition's transport identity under master.
func (r *partitionRecord) wrapTransport(rnd io.Reader, master []byte, id *age.X25519Identity) error {
	k, err := transportWrappingKey(master, r.Name)
	if err != nil {
		return err
	}
	defer clear(k)
	r.WrappedTransport, err = seal(rnd, k, []byte(id.String()), r.transportAD())
	return err
}

func (r *partitionRecord) unwrapTransport(master []byte) (*age.X25519Identity, error) {
	k, err := transportWrappingKey(master, r.Name)
	if err != nil {
		return nil, err
	}
	defer clear(k)
	pt, err := open(k, r.WrappedTransport, r.transportAD())
	if err != nil {
		return nil, fmt.Errorf("transport key: %w", err)
	}
	defer clear(pt)
	return age.ParseX25519Identity(string(pt))
}

func (r *partitionRecord) params(module string) quorum.Params {
	return quorum.Params{Module: module, Partition: r.Name, Generation: r.Generation,
		Threshold: r.Threshold, Shares: r.Shares, Commitments: r.Commitments}
}

func (r *partitionRecord) shares(module string, d *quorum.Dealing) []hsm.Share {
	out := make([]hsm.Share, len(d.Values))
	for i, v := range d.Values {
		out[i] = hsm.Share{Module: module, Partition: r.Name, Generation: r.Generation,
			Index: i + 1, Threshold: r.Threshold, Value: v}
	}
	return out
}

// Partition is one partition of a soft module. It implements hsm.Partition.
type Partition struct {
	m    *Module
	name string
	coll *quorum.Collector

	// opMu serialises state changes and key management (share
	// presentation, activation, seal, re-share, key storage, destruction
	// and export) with each other and with Module.Close; mu guards the
	// fields below. A key operation's commit holds mu for reading across
	// its fsync (commitActive), so that only signers that need it for
	// writing (a per-operation partition's, or a key's first use in an
	// activation) wait for it; a re-share's commit holds it for writing.
	opMu sync.Mutex
	mu   sync.RWMutex
	rec  *partitionRecord
	// Set while active.
	active    bool
	master    []byte
	transport *age.X25519Identity
	keys      map[string]crypto.Signer // unwrapped private keys by ID
	// Per-operation accounting.
	opSignatures int // allowed by the next activation
	left         int // remaining in this activation
	// epoch counts activations and seals, so that a re-share dealt in one
	// activation cannot be committed in another.
	epoch uint64
}

var _ hsm.Partition = (*Partition)(nil)

func newPartition(m *Module, rec *partitionRecord) (*Partition, error) {
	p := &Partition{m: m, name: rec.Name, rec: rec, opSignatures: 1}
	coll, err := quorum.NewCollector(quorum.Config{
		Params:          rec.params(m.meta.ID),
		Window:          rec.CollectWindow,
		MaxFailures:     rec.MaxFailures,
		LockoutDuration: rec.LockoutDuration,
		Store:           m.lock,
		Clock:           m.clock,
		OnEvent: func(typ string, fields map[string]string) error {
			_, err := m.log.Append(typ, rec.Name, fields)
			return err
		},
	})
	if err != nil {
		return nil, fmt.Errorf("soft: partition %s: %w", rec.Name, err)
	}
	p.coll = coll
	return p, nil
}

// Name returns the partition's name.
func (p *Partition) Name() string { return p.name }

// Status returns a snapshot of the partition.
func (p *Partition) Status() (hsm.PartitionStatus, error) {
	n, err := p.countKeys()
	if err != nil {
		return hsm.PartitionStatus{}, err
	}
	pr := p.coll.Progress()
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.statusLocked(pr, n), nil
}

func (p *Partition) statusLocked(pr quorum.Progress, keys int) hsm.PartitionStatus {
	st := hsm.PartitionStatus{
		Name:           p.name,
		Policy:         p.rec.Policy,
		State:          hsm.StateSealed,
		Threshold:      p.rec.Threshold,
		Shares:         p.rec.Shares,
		Presented:      pr.Presented,
		LockedUntil:    pr.LockedUntil,
		FailedShares:   pr.FailedShares,
		Keys:           keys,
		SignaturesLeft: -1,
		Generation:     p.rec.Generation,
	}
	switch {
	case p.active:
		st.State = hsm.StateActive
		st.Presented = p.rec.Threshold
		if p.rec.Policy == hsm.PolicyPerOperation {
			st.SignaturesLeft = p.left
		}
	case pr.Presented > 0:
		st.State = hsm.StateCollecting
		st.CollectingUntil = pr.CollectingUntil
	}
	return st
}

// AddShare presents one custodian share; see hsm.Partition.
func (p *Partition) AddShare(s hsm.Share) (hsm.PartitionStatus, error) {
	p.opMu.Lock()
	defer p.opMu.Unlock()
	if p.isActive() {
		return p.Status()
	}
	pr, err := p.coll.AddShare(s)
	if err != nil {
		st, serr := p.Status()
		if serr != nil {
			return hsm.PartitionStatus{}, errors.Join(err, serr)
		}
		return st, err
	}
	if pr.Secret != nil {
		err := p.activate(pr.Secret)
		clear(pr.Secret)
		if err != nil {
			return hsm.PartitionStatus{}, err
		}
	}
	return p.Status()
}

func (p *Partition) isActive() bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.active
}

// activate opens the master key and transport identity with the recovered
// secret. The activation is recorded before any key can be used. Called
// with opMu held.
func (p *Partition) activate(secret []byte) error {
	p.mu.Lock()
	rec, signatures := p.rec, p.opSignatures
	p.mu.Unlock()
	master, err := rec.unwrapMaster(p.m.meta.ID, secret)
	var tr *age.X25519Identity
	if err == nil {
		if tr, err = rec.unwrapTransport(master); err != nil {
			clear(master)
		}
	}
	if err != nil {
		// Each share matched the commitments, so the stored partition
		// record itself is wrong: say so rather than blame a custodian.
		_, _ = p.m.log.Append("activate", p.name, map[string]string{"result": "failed", "reason": err.Error()})
		return fmt.Errorf("soft: activate partition %s: %w", p.name, err)
	}
	left := -1
	fields := map[string]string{"generation": fmt.Sprint(rec.Generation), "threshold": fmt.Sprint(rec.Threshold)}
	if rec.Policy == hsm.PolicyPerOperation {
		left = signatures
		fields["signatures"] = fmt.Sprint(left)
	}
	if _, err := p.m.log.Append("activate", p.name, fields); err != nil {
		clear(master)
		return fmt.Errorf("soft: %w", err)
	}
	p.mu.Lock()
	p.active, p.master, p.transport, p.left = true, master, tr, left
	p.epoch++
	p.keys = map[string]crypto.Signer{}
	if rec.Policy == hsm.PolicyPerOperation {
		p.opSignatures = 1 // the allowance is for this activation only
	}
	p.mu.Unlock()
	return nil
}

// SetOperationSignatures sets how many signatures the next activation of a
// per-operation partition allows (default 1).
func (p *Partition) SetOperationSignatures(n int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.rec.Policy != hsm.PolicyPerOperation {
		return fmt.Errorf("soft: partition %s is %s; operation signatures apply to per-operation partitions", p.name, p.rec.Policy)
	}
	if n < 1 || n > 1000 {
		return fmt.Errorf("soft: operation signatures %d out of range 1..1000", n)
	}
	p.opSignatures = n
	return nil
}

// Seal forgets the partition's secrets and presented shares. It waits
// only for an operation in progress (a share being counted, a re-share, a
// key being stored, destroyed or exported), so that none can complete
// after it; signatures never hold it up.
func (p *Partition) Seal() error {
	p.opMu.Lock()
	defer p.opMu.Unlock()
	return p.seal("requested")
}

// seal drops secrets; reason "" skips the audit record.
func (p *Partition) seal(reason string) error {
	wasActive := p.dropSecrets()
	collecting := p.coll.Progress().Presented > 0
	p.coll.Reset()
	if reason == "" || (!wasActive && !collecting) {
		return nil
	}
	if _, err := p.m.log.Append("seal", p.name, map[string]string{"reason": reason}); err != nil {
		return fmt.Errorf("soft: %w", err)
	}
	return nil
}

func (p *Partition) dropSecrets() (wasActive bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	wasActive = p.active
	clear(p.master)
	p.active, p.master, p.transport, p.keys, p.left = false, nil, nil, nil, 0
	p.epoch++
	return wasActive
}

// activeEpoch returns the activation the partition is in, or ErrSealed. A
// per-operation partition whose last signature has been taken (left 0,
// about to reseal) counts as sealed already, for every operation.
func (p *Partition) activeEpoch() (uint64, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.epoch, p.checkActiveLocked(p.epoch)
}

// requireActive returns a copy of the master key if the partition is
// still in activation epoch, or ErrSealed.
func (p *Partition) requireActive(epoch uint64) ([]byte, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if err := p.checkActiveLocked(epoch); err != nil {
		return nil, err
	}
	return append([]byte(nil), p.master...), nil
}

// checkActiveLocked returns ErrSealed unless the partition is in
// activation epoch and, if per-operation, has signatures left. p.mu is
// held, for reading at least.
func (p *Partition) checkActiveLocked(epoch uint64) error {
	switch {
	case !p.active || p.left == 0:
		return fmt.Errorf("soft: partition %s: %w", p.name, hsm.ErrSealed)
	case p.epoch != epoch:
		return fmt.Errorf("soft: partition %s was sealed and activated again during the operation: %w", p.name, hsm.ErrSealed)
	}
	return nil
}

// commitActive runs commit, the step that makes an operation take effect
// (its audit record and its transaction, or a key leaving the module), if
// the partition is still in activation epoch, and holds p.mu for reading
// until commit returns. Operations hold opMu, which Seal and Close take,
// but a per-operation partition seals itself after its last signature
// without it (signer.Sign): taking that signature and the reseal need p.mu
// for writing, so they come wholly before the check, which then fails
// with ErrSealed and nothing committed, or wholly after commit. Signers
// of an online partition take only the read lock, so the commit's fsync
// holds them up only while something waits for the write lock.
func (p *Partition) commitActive(epoch uint64, event string, commit func() error) error {
	if h := p.m.beforeCommit; h != nil {
		h(event)
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if err := p.checkActiveLocked(epoch); err != nil {
		return err
	}
	return commit()
}

// Reshare makes a new share set for the partition and puts it in force
// at once: PrepareReshare, then Commit. It returns the new shares exactly
// when they are in force; on an error the current shares still work.
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
// secret and a new master key, and wraps the master key and the transport
// identity for it, without storing anything: the partition keeps its
// current shares until the returned set's Commit. Requires active.
func (p *Partition) PrepareReshare(n, m int) (hsm.PendingReshare, error) {
	p.opMu.Lock()
	defer p.opMu.Unlock()
	p.mu.Lock()
	old, tr, active, epoch := p.rec, p.transport, p.active && p.left != 0, p.epoch
	p.mu.Unlock()
	if !active {
		return nil, fmt.Errorf("soft: partition %s: %w", p.name, hsm.ErrSealed)
	}
	d, err := quorum.Deal(p.m.rand, nil, n, m)
	if err != nil {
		return nil, fmt.Errorf("soft: %w", err)
	}
	defer clear(d.Secret)
	master := make([]byte, keySize)
	if _, err := io.ReadFull(p.m.rand, master); err != nil {
		return nil, fmt.Errorf("soft: random master key: %w", err)
	}
	rec := *old
	rec.Generation, rec.Threshold, rec.Shares = old.Generation+1, m, n
	err = rec.wrapTransport(p.m.rand, master, tr)
	if err == nil {
		err = rec.wrapMaster(p.m.rand, p.m.meta.ID, d, master)
	}
	if err != nil {
		clear(master)
		return nil, err
	}
	return &pendingReshare{p: p, base: old, epoch: epoch, rec: rec, master: master, shares: rec.shares(p.m.meta.ID, d)}, nil
}

// pendingReshare is a share set dealt by PrepareReshare; it implements
// hsm.PendingReshare. Its fields are guarded by the partition's opMu.
type pendingReshare struct {
	p      *Partition
	base   *partitionRecord // the record in force when it was dealt
	epoch  uint64           // the activation it was dealt in
	rec    partitionRecord  // the record that Commit stores
	master []byte           // the new master key
	shares []hsm.Share
	done   bool
}

func (r *pendingReshare) Shares() []hsm.Share { return r.shares }

func (r *pendingReshare) Discard() {
	r.p.opMu.Lock()
	defer r.p.opMu.Unlock()
	if !r.done {
		clear(r.master)
		r.done = true
	}
}

// Commit stores the new generation and re-wraps every key of the
// partition under the new master key, in one transaction: from then on
// neither the previous shares nor a copy of module.db made before it (a
// backup with the previous shares) open a key stored after it. Keys that
// such a copy holds it still opens, as they were then.
//
// Commit fails, changing nothing, if the partition is sealed, was sealed
// (and perhaps activated again) or re-shared since PrepareReshare. A
// per-operation partition seals itself after its last signature without
// opMu, so this is checked again under mu in the transaction's turn.
//
// If the transaction reports an error but the database shows the new
// generation (bbolt writes its meta page before it syncs the file, so a
// failed sync leaves the change visible and perhaps durable), the
// partition takes the new generation as the database does and the error
// wraps hsm.ErrReshareIncomplete: either share set may be the one that
// opens the module after a restart.
func (r *pendingReshare) Commit() error {
	p := r.p
	p.opMu.Lock()
	defer p.opMu.Unlock()
	if r.done {
		return errors.New("soft: this re-share was committed or discarded already")
	}
	p.mu.Lock()
	err := r.checkLocked()
	var master []byte
	if err == nil {
		master = append([]byte(nil), p.master...)
	}
	cur := p.rec
	p.mu.Unlock()
	if err != nil {
		return err
	}
	defer clear(master)
	// Re-wrap before the audit record, so that a key that cannot be
	// re-wrapped stops the re-share with nothing recorded. Under opMu no
	// key of this partition is stored or destroyed meanwhile.
	recs, err := p.records()
	if err != nil {
		return err
	}
	rewrapped := make(map[string][]byte, len(recs))
	for _, kr := range recs {
		v, err := rewrapKey(p.m.rand, master, r.master, kr)
		if err != nil {
			return fmt.Errorf("soft: reshare of %s: %w (destroy the key, or restore its record, first)", p.name, err)
		}
		rewrapped[kr.ID] = v
	}
	v, err := json.Marshal(&r.rec)
	if err != nil {
		return err
	}
	fields := map[string]string{
		"generation": fmt.Sprint(r.rec.Generation), "shares": fmt.Sprint(r.rec.Shares), "threshold": fmt.Sprint(r.rec.Threshold),
		"previous_generation": fmt.Sprint(cur.Generation), "keys_rewrapped": fmt.Sprint(len(rewrapped)),
	}
	inForce, unknown := false, false
	err = p.m.audited("reshare", p.name, fields, func() error {
		// Signers that must unwrap a key wait for this one commit: the
		// key records and the master key they are wrapped under change
		// together.
		p.mu.Lock()
		defer p.mu.Unlock()
		// The partition may have sealed itself (its last signature)
		// since the check above; it stays as it is until mu is released.
		if err := r.checkLocked(); err != nil {
			return err
		}
		err := p.m.update("reshare", func(tx *bolt.Tx) error {
			b := tx.Bucket(keysBucket)
			n := 0
			err := b.ForEach(func(k, v []byte) error {
				var o keyRecord
				if json.Unmarshal(v, &o) != nil || o.Partition != p.name {
					return nil
				}
				if _, ok := rewrapped[string(k)]; !ok {
					return fmt.Errorf("key %s was stored during the re-share", k)
				}
				n++
				return nil
			})
			if err == nil && n != len(rewrapped) {
				err = errors.New("a key was destroyed during the re-share")
			}
			if err != nil {
				return err
			}
			for id, kv := range rewrapped {
				if err := b.Put([]byte(id), kv); err != nil {
					return err
				}
			}
			return tx.Bucket(partitionsBucket).Put([]byte(r.rec.Name), v)
		})
		if err != nil {
			var rerr error
			if inForce, rerr = r.stored(); rerr != nil {
				unknown = true
				return fmt.Errorf("%w: %w; and the partition could not be read back (%v), so the new generation may be in force", hsm.ErrReshareIncomplete, err, rerr)
			}
			if !inForce {
				return err
			}
			err = fmt.Errorf("%w: %w; but the database shows the new generation %d, which may or may not survive a restart", hsm.ErrReshareIncomplete, err, r.rec.Generation)
		}
		clear(p.master)
		p.master, p.rec = r.master, &r.rec
		return err
	})
	if inForce || err == nil {
		r.done, r.master = true, nil
		if perr := p.coll.SetParams(r.rec.params(p.m.meta.ID)); perr != nil {
			// Cannot happen for a fresh dealing; the new generation is in
			// force, so sealing is the safe way out: the next Open loads it.
			p.m.logger.Error("soft: re-shared partition's quorum parameters refused; sealing", "partition", p.name, "err", perr)
			_ = p.seal("re-share parameters refused")
		}
	}
	switch {
	case unknown:
		// Which generation the database holds is not known; the next Open
		// reads it.
		_ = p.seal("re-share commit uncertain")
		return fmt.Errorf("soft: reshare of %s: %w (the partition was sealed; close and reopen the module)", p.name, err)
	case inForce:
		return fmt.Errorf("soft: reshare of %s: %w", p.name, err)
	case err != nil:
		return fmt.Errorf("soft: reshare of %s (not done; the current shares still work): %w", p.name, err)
	}
	return nil
}

// checkLocked refuses the commit when the partition is not in the
// activation the re-share was dealt in, or was re-shared since. p.mu is
// held.
func (r *pendingReshare) checkLocked() error {
	p := r.p
	switch {
	case !p.active || p.left == 0:
		return fmt.Errorf("soft: partition %s: %w", p.name, hsm.ErrSealed)
	case p.epoch != r.epoch:
		return fmt.Errorf("soft: partition %s was sealed and activated again since this re-share was dealt", p.name)
	case p.rec != r.base:
		return fmt.Errorf("soft: partition %s was re-shared since this re-share was dealt", p.name)
	}
	return nil
}

// stored reads the partition record back after a failed commit and
// reports whether it is the one this re-share stores.
func (r *pendingReshare) stored() (bool, error) {
	rec, err := r.p.m.loadPartition(r.rec.Name)
	if err != nil {
		return false, err
	}
	return rec.Generation == r.rec.Generation && bytes.Equal(rec.WrappedMaster, r.rec.WrappedMaster), nil
}

// rewrapKey returns the stored form of kr with its private key wrapped
// under newMaster instead of oldMaster; the attributes stay as they are.
func rewrapKey(rnd io.Reader, oldMaster, newMaster []byte, kr *keyRecord) ([]byte, error) {
	owk, err := keyWrappingKey(oldMaster, kr.ID)
	if err != nil {
		return nil, err
	}
	defer clear(owk)
	pkcs8, err := open(owk, kr.Wrapped, kr.ad())
	if err != nil {
		return nil, &hsm.KeyLoadError{ID: kr.ID, Err: err}
	}
	defer clear(pkcs8)
	nwk, err := keyWrappingKey(newMaster, kr.ID)
	if err != nil {
		return nil, err
	}
	defer clear(nwk)
	nr := *kr
	if nr.Wrapped, err = seal(rnd, nwk, pkcs8, kr.ad()); err != nil {
		return nil, err
	}
	return json.Marshal(&nr)
}

// TransportKey returns the partition's age recipient for wrapped imports.
func (p *Partition) TransportKey() (string, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if !strings.HasPrefix(p.rec.TransportRecipient, "age1") {
		return "", fmt.Errorf("soft: partition %s has no transport key", p.name)
	}
	return p.rec.TransportRecipient, nil
}
