package soft

import (
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
	// fields below and is held only briefly, so signing never waits for an
	// fsync of another operation.
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
	p.mu.Lock()
	defer p.mu.Unlock()
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
	p.mu.Lock()
	defer p.mu.Unlock()
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
	return wasActive
}

// requireActive returns the master key (a copy) or ErrSealed. A
// per-operation partition whose last signature has been taken (left 0,
// about to reseal) counts as sealed already, for every operation.
func (p *Partition) requireActive() ([]byte, *partitionRecord, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.active || p.left == 0 {
		return nil, nil, fmt.Errorf("soft: partition %s: %w", p.name, hsm.ErrSealed)
	}
	return append([]byte(nil), p.master...), p.rec, nil
}

// Reshare makes a new share set for the partition. The master key, and so
// every key, stays; it is re-wrapped under a fresh secret and the share
// generation goes up, so shares of the old set are refused.
func (p *Partition) Reshare(n, m int) ([]hsm.Share, error) {
	p.opMu.Lock()
	defer p.opMu.Unlock()
	master, old, err := p.requireActive()
	if err != nil {
		return nil, err
	}
	defer clear(master)
	d, err := quorum.Deal(p.m.rand, nil, n, m)
	if err != nil {
		return nil, fmt.Errorf("soft: %w", err)
	}
	defer clear(d.Secret)
	rec := *old
	rec.Generation, rec.Threshold, rec.Shares = old.Generation+1, m, n
	if err := rec.wrapMaster(p.m.rand, p.m.meta.ID, d, master); err != nil {
		return nil, err
	}
	v, err := json.Marshal(&rec)
	if err != nil {
		return nil, err
	}
	err = p.m.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(partitionsBucket).Put([]byte(rec.Name), v)
	})
	if err != nil {
		return nil, fmt.Errorf("soft: store re-shared partition: %w", err)
	}
	if err := p.coll.SetParams(rec.params(p.m.meta.ID)); err != nil {
		return nil, fmt.Errorf("soft: %w", err)
	}
	p.mu.Lock()
	p.rec = &rec
	p.mu.Unlock()
	// The new generation is stored and in force: the old shares no longer
	// work, so from here on the new ones are returned even with an error,
	// and the caller must save them.
	shares := rec.shares(p.m.meta.ID, d)
	_, err = p.m.log.Append("reshare", p.name, map[string]string{
		"generation": fmt.Sprint(rec.Generation), "shares": fmt.Sprint(n), "threshold": fmt.Sprint(m),
		"previous_generation": fmt.Sprint(old.Generation),
	})
	if err != nil {
		return shares, fmt.Errorf("soft: reshare of %s done but not audited: %w", p.name, err)
	}
	return shares, nil
}

// TransportKey returns the partition's age recipient for wrapped imports.
func (p *Partition) TransportKey() (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !strings.HasPrefix(p.rec.TransportRecipient, "age1") {
		return "", fmt.Errorf("soft: partition %s has no transport key", p.name)
	}
	return p.rec.TransportRecipient, nil
}
