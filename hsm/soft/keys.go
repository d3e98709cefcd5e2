package soft

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
	"unicode"

	"filippo.io/age"
	"github.com/hsmca/hsmca/hsm"
	bolt "go.etcd.io/bbolt"
)

// keyRecord is a key as stored. Everything but Wrapped is authenticated as
// associated data of Wrapped.
type keyRecord struct {
	ID         string      `json:"id"`
	Label      string      `json:"label"`
	Type       hsm.KeyType `json:"type"`
	Exportable bool        `json:"exportable"`
	Partition  string      `json:"partition"`
	Created    time.Time   `json:"created"`
	Origin     string      `json:"origin"` // "generated" or "imported from module X"
	Public     []byte      `json:"public"` // PKIX DER
	Wrapped    []byte      `json:"wrapped"`
}

func (r *keyRecord) ad() []byte {
	return lp([]byte("hsmca soft key v1"), r.ID, r.Label, string(r.Type), fmt.Sprint(r.Exportable),
		r.Partition, r.Created.UTC().Format(time.RFC3339Nano), r.Origin, string(r.Public))
}

func (r *keyRecord) info() (hsm.KeyInfo, error) {
	pub, err := x509.ParsePKIXPublicKey(r.Public)
	if err != nil {
		return hsm.KeyInfo{}, &hsm.KeyLoadError{ID: r.ID, Err: fmt.Errorf("public key: %w", err)}
	}
	return hsm.KeyInfo{ID: r.ID, Label: r.Label, Type: r.Type, Exportable: r.Exportable, Created: r.Created, Public: pub}, nil
}

// keyID is the first 16 bytes of SHA-256 over the public key's PKIX DER, in
// hex: the same key has the same ID in every module it is imported into.
func keyID(spki []byte) string {
	h := sha256.Sum256(spki)
	return hex.EncodeToString(h[:16])
}

func generate(typ hsm.KeyType, rnd io.Reader) (crypto.Signer, error) {
	switch typ {
	case hsm.ECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rnd)
	case hsm.ECDSAP384:
		return ecdsa.GenerateKey(elliptic.P384(), rnd)
	case hsm.RSA2048:
		return rsa.GenerateKey(rnd, 2048)
	case hsm.RSA3072:
		return rsa.GenerateKey(rnd, 3072)
	case hsm.RSA4096:
		return rsa.GenerateKey(rnd, 4096)
	case hsm.Ed25519:
		_, k, err := ed25519.GenerateKey(rnd)
		return k, err
	}
	return nil, fmt.Errorf("soft: %w", errors.New("unknown key type "+string(typ)))
}

// typeOf names the KeyType of a private key, or "".
func typeOf(k crypto.Signer) hsm.KeyType {
	switch k := k.(type) {
	case *ecdsa.PrivateKey:
		switch k.Curve {
		case elliptic.P256():
			return hsm.ECDSAP256
		case elliptic.P384():
			return hsm.ECDSAP384
		}
	case *rsa.PrivateKey:
		switch k.N.BitLen() {
		case 2048:
			return hsm.RSA2048
		case 3072:
			return hsm.RSA3072
		case 4096:
			return hsm.RSA4096
		}
	case ed25519.PrivateKey:
		return hsm.Ed25519
	}
	return ""
}

func checkLabel(label string) error {
	if label == "" || len(label) > 128 {
		return errors.New("soft: a key label must be 1 to 128 characters")
	}
	for _, r := range label {
		if unicode.IsControl(r) || r == unicode.ReplacementChar {
			return errors.New("soft: a key label must not contain control characters")
		}
	}
	return nil
}

// GenerateKey makes a key inside the partition. Requires active.
func (p *Partition) GenerateKey(typ hsm.KeyType, label string, exportable bool) (hsm.KeyInfo, error) {
	if _, err := hsm.ParseKeyType(string(typ)); err != nil {
		return hsm.KeyInfo{}, err
	}
	if err := checkLabel(label); err != nil {
		return hsm.KeyInfo{}, err
	}
	epoch, err := p.activeEpoch()
	if err != nil {
		return hsm.KeyInfo{}, err
	}
	// Key generation can take seconds (RSA-4096); do it before taking
	// the operation lock.
	priv, err := generate(typ, p.m.rand)
	if err != nil {
		return hsm.KeyInfo{}, fmt.Errorf("soft: generate %s key: %w", typ, err)
	}
	return p.store(epoch, priv, typ, label, exportable, "generated", "key-generate", nil)
}

// store wraps priv under the partition's master key and saves it,
// refusing a duplicate label or ID. It fails with ErrSealed, storing and
// recording nothing, unless the partition is still in the activation
// epoch, the one in which the caller checked it, when the key is
// committed.
func (p *Partition) store(epoch uint64, priv crypto.Signer, typ hsm.KeyType, label string, exportable bool, origin, event string, extra map[string]string) (hsm.KeyInfo, error) {
	p.opMu.Lock()
	defer p.opMu.Unlock()
	master, err := p.requireActive(epoch)
	if err != nil {
		return hsm.KeyInfo{}, err
	}
	defer clear(master)
	spki, err := x509.MarshalPKIXPublicKey(priv.Public())
	if err != nil {
		return hsm.KeyInfo{}, fmt.Errorf("soft: encode public key: %w", err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return hsm.KeyInfo{}, fmt.Errorf("soft: encode private key: %w", err)
	}
	defer clear(pkcs8)
	rec := &keyRecord{ID: keyID(spki), Label: label, Type: typ, Exportable: exportable, Partition: p.name,
		Created: p.m.clock().UTC(), Origin: origin, Public: spki}
	wk, err := keyWrappingKey(master, rec.ID)
	if err != nil {
		return hsm.KeyInfo{}, err
	}
	defer clear(wk)
	if rec.Wrapped, err = seal(p.m.rand, wk, pkcs8, rec.ad()); err != nil {
		return hsm.KeyInfo{}, err
	}
	v, err := json.Marshal(rec)
	if err != nil {
		return hsm.KeyInfo{}, err
	}
	// Refuse a duplicate before the audit record, so that the usual
	// refusal leaves no record of a key that was never stored. The commit
	// checks again (another partition may store the same key meanwhile).
	if err := p.m.db.View(func(tx *bolt.Tx) error { return p.checkNewKey(tx, rec.ID, label) }); err != nil {
		return hsm.KeyInfo{}, err
	}
	fields := map[string]string{"key": rec.ID, "label": label, "type": string(typ), "exportable": fmt.Sprint(exportable)}
	for k, v := range extra {
		fields[k] = v
	}
	// The audit record first: a key never exists without it (see
	// Module.audited).
	err = p.commitActive(epoch, event, func() error {
		return p.m.audited(event, p.name, fields, func() error {
			return p.m.update(event, func(tx *bolt.Tx) error {
				if err := p.checkNewKey(tx, rec.ID, label); err != nil {
					return err
				}
				return tx.Bucket(keysBucket).Put([]byte(rec.ID), v)
			})
		})
	})
	if errors.Is(err, hsm.ErrKeyExists) || errors.Is(err, hsm.ErrSealed) {
		return hsm.KeyInfo{}, err
	}
	if err != nil {
		return hsm.KeyInfo{}, fmt.Errorf("soft: store key %s (not stored): %w", rec.ID, err)
	}
	return rec.info()
}

// checkNewKey refuses a key whose ID the module holds already or whose
// label the partition holds already.
func (p *Partition) checkNewKey(tx *bolt.Tx, id, label string) error {
	b := tx.Bucket(keysBucket)
	if b.Get([]byte(id)) != nil {
		return fmt.Errorf("soft: key %s: %w", id, hsm.ErrKeyExists)
	}
	var dup bool
	err := b.ForEach(func(_, v []byte) error {
		var o keyRecord
		if json.Unmarshal(v, &o) == nil && o.Partition == p.name && o.Label == label {
			dup = true
		}
		return nil
	})
	if err != nil {
		return err
	}
	if dup {
		return fmt.Errorf("soft: label %q in partition %s: %w", label, p.name, hsm.ErrKeyExists)
	}
	return nil
}

// records returns the partition's key records, oldest first. Records that
// are not even readable JSON are reported to the logger and skipped.
func (p *Partition) records() ([]*keyRecord, error) {
	var out []*keyRecord
	err := p.m.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(keysBucket).ForEach(func(k, v []byte) error {
			r := new(keyRecord)
			if err := json.Unmarshal(v, r); err != nil {
				p.m.logger.Warn("soft: unreadable key record", "key", string(k), "err", err)
				return nil
			}
			if r.Partition == p.name {
				out = append(out, r)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("soft: read keys: %w", err)
	}
	slices.SortFunc(out, func(a, b *keyRecord) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

func (p *Partition) countKeys() (int, error) {
	recs, err := p.records()
	return len(recs), err
}

// Keys lists the partition's keys; works while sealed.
func (p *Partition) Keys() ([]hsm.KeyInfo, error) {
	recs, err := p.records()
	if err != nil {
		return nil, err
	}
	out := make([]hsm.KeyInfo, 0, len(recs))
	for _, r := range recs {
		info, err := r.info()
		if err != nil {
			p.m.logger.Warn("soft: key with unreadable public key", "key", r.ID)
			info = hsm.KeyInfo{ID: r.ID, Label: r.Label, Type: r.Type, Exportable: r.Exportable, Created: r.Created}
		}
		out = append(out, info)
	}
	return out, nil
}

// record finds a key by ID, then by label.
func (p *Partition) record(idOrLabel string) (*keyRecord, error) {
	recs, err := p.records()
	if err != nil {
		return nil, err
	}
	for _, r := range recs {
		if r.ID == idOrLabel {
			return r, nil
		}
	}
	for _, r := range recs {
		if r.Label == idOrLabel {
			return r, nil
		}
	}
	return nil, fmt.Errorf("soft: key %q in partition %s: %w", idOrLabel, p.name, hsm.ErrKeyNotFound)
}

// Key returns one key's info by ID or label.
func (p *Partition) Key(idOrLabel string) (hsm.KeyInfo, error) {
	r, err := p.record(idOrLabel)
	if err != nil {
		return hsm.KeyInfo{}, err
	}
	return r.info()
}

// unwrapKey decrypts a stored key with the master key, checking that its
// attributes are the ones it was stored with.
func unwrapKey(master []byte, r *keyRecord) (crypto.Signer, error) {
	wk, err := keyWrappingKey(master, r.ID)
	if err != nil {
		return nil, err
	}
	defer clear(wk)
	pkcs8, err := open(wk, r.Wrapped, r.ad())
	if err != nil {
		return nil, &hsm.KeyLoadError{ID: r.ID, Err: err}
	}
	defer clear(pkcs8)
	k, err := x509.ParsePKCS8PrivateKey(pkcs8)
	if err != nil {
		return nil, &hsm.KeyLoadError{ID: r.ID, Err: err}
	}
	priv, ok := k.(crypto.Signer)
	if !ok || typeOf(priv) != r.Type {
		return nil, &hsm.KeyLoadError{ID: r.ID, Err: errors.New("key type does not match its record")}
	}
	spki, err := x509.MarshalPKIXPublicKey(priv.Public())
	if err != nil || !bytes.Equal(spki, r.Public) {
		return nil, &hsm.KeyLoadError{ID: r.ID, Err: errors.New("public key does not match the private key")}
	}
	return priv, nil
}

// Signer returns the key as a crypto.Signer; see hsm.Partition.
func (p *Partition) Signer(idOrLabel string) (crypto.Signer, error) {
	r, err := p.record(idOrLabel)
	if err != nil {
		return nil, err
	}
	info, err := r.info()
	if err != nil {
		return nil, err
	}
	return &signer{p: p, id: r.ID, pub: info.Public}, nil
}

// DestroyKey deletes a key. Requires active.
func (p *Partition) DestroyKey(idOrLabel string) error {
	p.opMu.Lock()
	defer p.opMu.Unlock()
	epoch, err := p.activeEpoch()
	if err != nil {
		return err
	}
	r, err := p.record(idOrLabel)
	if err != nil {
		return err
	}
	err = p.commitActive(epoch, "key-destroy", func() error {
		return p.m.audited("key-destroy", p.name, map[string]string{"key": r.ID, "label": r.Label}, func() error {
			return p.m.update("key-destroy", func(tx *bolt.Tx) error { return tx.Bucket(keysBucket).Delete([]byte(r.ID)) })
		})
	})
	if errors.Is(err, hsm.ErrSealed) {
		return err
	}
	if err != nil {
		return fmt.Errorf("soft: destroy key %s: %w", r.ID, err)
	}
	p.mu.Lock()
	delete(p.keys, r.ID)
	p.mu.Unlock()
	return nil
}

// signer is a partition key as a crypto.Signer.
type signer struct {
	p   *Partition
	id  string
	pub crypto.PublicKey
}

func (s *signer) Public() crypto.PublicKey { return s.pub }

// Sign signs digest with the key once the partition is active. Its audit
// record (key ID and digest, or for Ed25519 the SHA-256 of the message)
// takes its place in the chain before the signature is computed, and the
// signature is returned only after the record has been written to the
// module's audit segment: a signature this process hands out always has
// its record, even if the process is killed the next moment (see
// hsm/audit for the power-loss bound).
func (s *signer) Sign(rnd io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	priv, last, err := s.p.useKey(s.id)
	if err != nil {
		return nil, err
	}
	var h crypto.Hash
	if opts != nil {
		h = opts.HashFunc()
	}
	recorded, hashName := digest, ""
	if h != 0 {
		hashName = h.String()
	} else {
		// Ed25519 signs the message itself; record its SHA-256.
		sum := sha256.Sum256(digest)
		recorded, hashName = sum[:], "message-sha256"
	}
	log := s.p.m.log
	ticket, err := log.BeginSign(s.p.name, s.id, hashName, recorded)
	if err != nil {
		if last {
			s.p.seal("operation signatures spent")
		}
		return nil, fmt.Errorf("soft: %w", err)
	}
	sig, serr := priv.Sign(rnd, digest, opts)
	werr := log.Wait(ticket)
	if last {
		if err := s.p.seal("operation signatures spent"); err != nil && werr == nil {
			werr = err
		}
	}
	if werr != nil {
		return nil, fmt.Errorf("soft: audit signature: %w", werr)
	}
	if serr != nil {
		return nil, fmt.Errorf("soft: sign with key %s: %w", s.id, serr)
	}
	return sig, nil
}

var _ hsm.AuditSyncer = (*signer)(nil)

// SyncAudit makes the audit records of every signature released so far
// durable; see hsm.AuditSyncer.
func (s *signer) SyncAudit() error {
	if err := s.p.m.log.SyncWritten(); err != nil {
		return fmt.Errorf("soft: %w", err)
	}
	return nil
}

// useKey returns the unwrapped key if the partition is active and counts
// the signature against a per-operation allowance. last is set when this
// signature spends it: the partition is then already unusable for others.
func (p *Partition) useKey(id string) (priv crypto.Signer, last bool, err error) {
	// The common case, an online partition's unwrapped key, takes only a
	// read lock: concurrent signers do not queue here.
	p.mu.RLock()
	if p.active && p.left < 0 {
		priv = p.keys[id]
	}
	p.mu.RUnlock()
	if priv != nil {
		return priv, false, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.active || p.left == 0 {
		return nil, false, fmt.Errorf("soft: partition %s: %w", p.name, hsm.ErrSealed)
	}
	priv = p.keys[id]
	if priv == nil {
		r, err := p.recordByID(id)
		if err != nil {
			return nil, false, err
		}
		if priv, err = unwrapKey(p.master, r); err != nil {
			return nil, false, err
		}
		p.keys[id] = priv
	}
	if p.left > 0 {
		p.left--
		last = p.left == 0
	}
	return priv, last, nil
}

func (p *Partition) recordByID(id string) (*keyRecord, error) {
	var r *keyRecord
	err := p.m.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(keysBucket).Get([]byte(id))
		if v == nil {
			return fmt.Errorf("soft: key %s: %w", id, hsm.ErrKeyNotFound)
		}
		r = new(keyRecord)
		if err := json.Unmarshal(v, r); err != nil {
			return &hsm.KeyLoadError{ID: id, Err: err}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if r.ID != id || r.Partition != p.name {
		return nil, &hsm.KeyLoadError{ID: id, Err: errors.New("record names another key or partition")}
	}
	return r, nil
}

// exportFormat names the plaintext inside an export blob.
const exportFormat = "hsmca wrapped key v1"

// exported is the plaintext of an export blob; it exists only inside the
// age encryption to the target partition's transport key.
type exported struct {
	Format          string      `json:"format"`
	SourceModule    string      `json:"source_module"`
	SourcePartition string      `json:"source_partition"`
	ID              string      `json:"id"`
	Label           string      `json:"label"`
	Type            hsm.KeyType `json:"type"`
	Exportable      bool        `json:"exportable"`
	Created         time.Time   `json:"created"`
	PKCS8           []byte      `json:"pkcs8"`
}

// ExportKey wraps an exportable key for another partition's transport key
// (an age X25519 recipient). Requires active.
func (p *Partition) ExportKey(idOrLabel, transportKey string) ([]byte, error) {
	rcpt, err := age.ParseX25519Recipient(strings.TrimSpace(transportKey))
	if err != nil {
		return nil, fmt.Errorf("soft: transport key: %w", err)
	}
	// A key leaving the module is an operation that Seal and Close must
	// not overtake: its audit record comes before theirs.
	p.opMu.Lock()
	defer p.opMu.Unlock()
	epoch, err := p.activeEpoch()
	if err != nil {
		return nil, err
	}
	master, err := p.requireActive(epoch)
	if err != nil {
		return nil, err
	}
	defer clear(master)
	r, err := p.record(idOrLabel)
	if err != nil {
		return nil, err
	}
	// Unwrap first: the exportable flag counts only once authenticated.
	priv, err := unwrapKey(master, r)
	if err != nil {
		return nil, err
	}
	if !r.Exportable {
		return nil, fmt.Errorf("soft: key %s: %w", r.ID, hsm.ErrNotExportable)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("soft: encode key: %w", err)
	}
	defer clear(pkcs8)
	pt, err := json.Marshal(exported{Format: exportFormat, SourceModule: p.m.meta.ID, SourcePartition: p.name,
		ID: r.ID, Label: r.Label, Type: r.Type, Exportable: r.Exportable, Created: r.Created, PKCS8: pkcs8})
	if err != nil {
		return nil, err
	}
	defer clear(pt)
	var buf bytes.Buffer
	w, err := age.Encrypt(&buf, rcpt)
	if err == nil {
		_, err = w.Write(pt)
	}
	if err == nil {
		err = w.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("soft: wrap key for export: %w", err)
	}
	// The blob leaves the module with its record, and only if the
	// partition did not seal itself (its last signature) meanwhile.
	err = p.commitActive(epoch, "export", func() error {
		_, err := p.m.log.Append("export", p.name, map[string]string{"key": r.ID, "label": r.Label, "to": rcpt.String()})
		return err
	})
	if errors.Is(err, hsm.ErrSealed) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("soft: %w", err)
	}
	return buf.Bytes(), nil
}

// maxExportBlob bounds what ImportKey reads (an RSA-4096 key is ~2.4 kB).
const maxExportBlob = 64 << 10

// ImportKey unwraps a blob made by ExportKey for this partition and stores
// the key with its ID, label, type and exportability. Requires active.
func (p *Partition) ImportKey(blob []byte) (hsm.KeyInfo, error) {
	p.mu.RLock()
	tr, epoch := p.transport, p.epoch
	err := p.checkActiveLocked(epoch)
	p.mu.RUnlock()
	if err != nil {
		return hsm.KeyInfo{}, err
	}
	e, priv, err := parseExport(blob, tr)
	if err != nil {
		return hsm.KeyInfo{}, err
	}
	return p.store(epoch, priv, e.Type, e.Label, e.Exportable, "imported from module "+e.SourceModule, "import",
		map[string]string{"source_module": e.SourceModule, "source_partition": e.SourcePartition})
}

// parseExport decrypts and checks an export blob.
func parseExport(blob []byte, id age.Identity) (*exported, crypto.Signer, error) {
	if len(blob) > maxExportBlob {
		return nil, nil, fmt.Errorf("soft: import: blob larger than %d bytes", maxExportBlob)
	}
	r, err := age.Decrypt(bytes.NewReader(blob), id)
	if err != nil {
		return nil, nil, fmt.Errorf("soft: import: not wrapped for this partition's transport key: %w", err)
	}
	pt, err := io.ReadAll(io.LimitReader(r, maxExportBlob+1))
	if err != nil {
		return nil, nil, fmt.Errorf("soft: import: %w", err)
	}
	defer clear(pt)
	dec := json.NewDecoder(bytes.NewReader(pt))
	dec.DisallowUnknownFields()
	var e exported
	if err := dec.Decode(&e); err != nil {
		return nil, nil, fmt.Errorf("soft: import: malformed wrapped key: %w", err)
	}
	defer clear(e.PKCS8)
	if e.Format != exportFormat {
		return nil, nil, fmt.Errorf("soft: import: unknown format %q", e.Format)
	}
	if _, err := hsm.ParseKeyType(string(e.Type)); err != nil {
		return nil, nil, fmt.Errorf("soft: import: %w", err)
	}
	if err := checkLabel(e.Label); err != nil {
		return nil, nil, fmt.Errorf("soft: import: %w", err)
	}
	k, err := x509.ParsePKCS8PrivateKey(e.PKCS8)
	if err != nil {
		return nil, nil, fmt.Errorf("soft: import: %w", err)
	}
	priv, ok := k.(crypto.Signer)
	if !ok || typeOf(priv) != e.Type {
		return nil, nil, fmt.Errorf("soft: import: key is not of type %s", e.Type)
	}
	spki, err := x509.MarshalPKIXPublicKey(priv.Public())
	if err != nil {
		return nil, nil, fmt.Errorf("soft: import: %w", err)
	}
	if keyID(spki) != e.ID {
		return nil, nil, fmt.Errorf("soft: import: key ID %s does not match the key", e.ID)
	}
	return &e, priv, nil
}
