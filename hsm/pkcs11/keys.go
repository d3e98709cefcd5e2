//go:build cgo

package pkcs11

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ThalesGroup/crypto11"
	p11 "github.com/miekg/pkcs11"
	bolt "go.etcd.io/bbolt"

	"github.com/hsmca/hsmca/hsm"
)

// keyRecord is a key's metadata in pkcs11.db, kept so that keys are
// listable while sealed and so that the key found on the token at signing
// time can be checked against the public key recorded at generation.
type keyRecord struct {
	ID      string      `json:"id"`
	Label   string      `json:"label"`
	Type    hsm.KeyType `json:"type"`
	Created time.Time   `json:"created"`
	Public  []byte      `json:"public"` // PKIX DER
}

func (r *keyRecord) info() (hsm.KeyInfo, error) {
	pub, err := x509.ParsePKIXPublicKey(r.Public)
	if err != nil {
		return hsm.KeyInfo{}, &hsm.KeyLoadError{ID: r.ID, Err: err}
	}
	return hsm.KeyInfo{ID: r.ID, Label: r.Label, Type: r.Type, Created: r.Created, Public: pub}, nil
}

// maxLabelLen bounds labels; CKA_LABEL has no limit but tools print them.
const maxLabelLen = 128

// GenerateKey generates a key pair on the token: CKA_TOKEN, CKA_PRIVATE,
// CKA_SENSITIVE true, CKA_EXTRACTABLE false, a random 16-byte CKA_ID (the
// key ID, in hex) and CKA_LABEL label (the ID if label is empty). It refuses
// a label that exists in the module or on the token (hsm.ErrKeyExists),
// exportable keys and Ed25519 (hsm.ErrUnsupported). Requires active.
func (p *Partition) GenerateKey(typ hsm.KeyType, label string, exportable bool) (hsm.KeyInfo, error) {
	if exportable {
		return hsm.KeyInfo{}, fmt.Errorf("%w: hsm/pkcs11: keys are generated on the token non-extractable (CKA_EXTRACTABLE=false); an exportable key is not possible with this backend", hsm.ErrUnsupported)
	}
	var curve elliptic.Curve
	bits := 0
	switch typ {
	case hsm.ECDSAP256:
		curve = elliptic.P256()
	case hsm.ECDSAP384:
		curve = elliptic.P384()
	case hsm.RSA2048:
		bits = 2048
	case hsm.RSA3072:
		bits = 3072
	case hsm.RSA4096:
		bits = 4096
	case hsm.Ed25519:
		return hsm.KeyInfo{}, fmt.Errorf("%w: hsm/pkcs11: ed25519 keys cannot be generated through this backend (crypto11 has no EdDSA support and SoftHSM2 does not offer it through it); use ecdsa-p256, ecdsa-p384 or rsa-2048/3072/4096", hsm.ErrUnsupported)
	default:
		return hsm.KeyInfo{}, fmt.Errorf("hsm/pkcs11: unknown key type %q", typ)
	}
	if len(label) > maxLabelLen || !utf8.ValidString(label) {
		return hsm.KeyInfo{}, fmt.Errorf("hsm/pkcs11: key label must be valid UTF-8 of at most %d bytes", maxLabelLen)
	}
	if strings.HasPrefix(label, uriScheme) {
		return hsm.KeyInfo{}, errors.New(`hsm/pkcs11: a key label must not start with "pkcs11:"`)
	}

	p.keyMu.Lock()
	defer p.keyMu.Unlock()
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.ctx == nil {
		return hsm.KeyInfo{}, p.sealedErr()
	}
	idb := make([]byte, 16)
	if _, err := io.ReadFull(p.m.opts.Rand, idb); err != nil {
		return hsm.KeyInfo{}, fmt.Errorf("hsm/pkcs11: key ID: %w", err)
	}
	id := hex.EncodeToString(idb)
	if label == "" {
		label = id
	}
	if _, err := p.Key(label); err == nil {
		return hsm.KeyInfo{}, fmt.Errorf("%w: %q", hsm.ErrKeyExists, label)
	}
	pairs, err := p.ctx.FindKeyPairs(nil, []byte(label))
	if err != nil {
		return hsm.KeyInfo{}, p.libErr("look up label", err)
	}
	privs, err := p.ctx.FindPrivateKeys(nil, []byte(label))
	if err != nil {
		return hsm.KeyInfo{}, p.libErr("look up label", err)
	}
	if len(pairs) > 0 || len(privs) > 0 {
		return hsm.KeyInfo{}, fmt.Errorf("%w: %q (a key with that label is on the token already)", hsm.ErrKeyExists, label)
	}

	pubAttrs, err := crypto11.NewAttributeSetWithIDAndLabel(idb, []byte(label))
	if err != nil {
		return hsm.KeyInfo{}, fmt.Errorf("hsm/pkcs11: %w", err)
	}
	privAttrs := pubAttrs.Copy()
	must := func(a crypto11.AttributeSet, t crypto11.AttributeType, v any) {
		if err == nil {
			err = a.Set(t, v)
		}
	}
	must(pubAttrs, crypto11.CkaToken, true)
	must(pubAttrs, crypto11.CkaPrivate, false)
	must(pubAttrs, crypto11.CkaVerify, true)
	must(privAttrs, crypto11.CkaToken, true)
	must(privAttrs, crypto11.CkaPrivate, true)
	must(privAttrs, crypto11.CkaSign, true)
	must(privAttrs, crypto11.CkaSensitive, true)
	must(privAttrs, crypto11.CkaExtractable, false)
	// Signing keys only: no decryption, unwrapping or derivation, so a CA
	// key cannot be turned into an oracle for anything but signatures.
	must(pubAttrs, crypto11.CkaEncrypt, false)
	must(pubAttrs, crypto11.CkaWrap, false)
	must(privAttrs, crypto11.CkaDecrypt, false)
	must(privAttrs, crypto11.CkaUnwrap, false)
	must(privAttrs, crypto11.CkaDerive, false)
	if err != nil {
		return hsm.KeyInfo{}, fmt.Errorf("hsm/pkcs11: key attributes: %w", err)
	}
	var signer crypto11.Signer
	if bits > 0 {
		signer, err = p.ctx.GenerateRSAKeyPairWithAttributes(pubAttrs, privAttrs, bits)
	} else {
		signer, err = p.ctx.GenerateECDSAKeyPairWithAttributes(pubAttrs, privAttrs, curve)
	}
	if err != nil {
		if isCode(err, p11.CKR_MECHANISM_INVALID) || isCode(err, p11.CKR_KEY_SIZE_RANGE) || isCode(err, p11.CKR_DOMAIN_PARAMS_INVALID) || isCode(err, p11.CKR_CURVE_NOT_SUPPORTED) {
			return hsm.KeyInfo{}, fmt.Errorf("%w: hsm/pkcs11: the token cannot generate %s keys: %v", hsm.ErrUnsupported, typ, err)
		}
		return hsm.KeyInfo{}, p.libErr("generate "+string(typ)+" key", err)
	}
	der, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		_ = signer.Delete()
		return hsm.KeyInfo{}, fmt.Errorf("hsm/pkcs11: encode public key: %w", err)
	}
	rec := keyRecord{ID: id, Label: label, Type: typ, Created: p.m.opts.Clock().UTC(), Public: der}
	if err := p.putKey(&rec); err != nil {
		_ = signer.Delete()
		return hsm.KeyInfo{}, err
	}
	p.smu.Lock()
	if p.signers == nil {
		p.signers = map[string]crypto11.Signer{}
	}
	p.signers[id] = signer
	p.smu.Unlock()
	if _, err := p.m.log.Append("key-generate", p.name, map[string]string{"key": id, "label": label, "type": string(typ)}); err != nil {
		return hsm.KeyInfo{}, fmt.Errorf("hsm/pkcs11: key %s generated but not audited: %w", id, err)
	}
	return rec.info()
}

// libErr wraps a library error; one that says the token went away seals
// the partition (the caller holds p.mu for reading, so the seal runs later).
func (p *Partition) libErr(what string, err error) error {
	if tokenGone(err) {
		gen := p.gen
		go p.tokenFailed(gen, err)
		return fmt.Errorf("hsm/pkcs11: partition %s: %s: %w: %w", p.name, what, ErrTokenUnavailable, err)
	}
	return fmt.Errorf("hsm/pkcs11: partition %s: %s: %w", p.name, what, err)
}

func (p *Partition) putKey(rec *keyRecord) error {
	v, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("hsm/pkcs11: encode key record: %w", err)
	}
	err = p.m.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.Bucket([]byte(keysBucket)).CreateBucketIfNotExists([]byte(p.name))
		if err != nil {
			return err
		}
		return b.Put([]byte(rec.ID), v)
	})
	if err != nil {
		return fmt.Errorf("hsm/pkcs11: store key record: %w", err)
	}
	return nil
}

func (p *Partition) records() ([]keyRecord, error) {
	var recs []keyRecord
	err := p.m.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(keysBucket)).Bucket([]byte(p.name))
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var r keyRecord
			if err := json.Unmarshal(v, &r); err != nil || r.ID != string(k) {
				return &hsm.KeyLoadError{ID: string(k), Err: errors.New("malformed key record")}
			}
			recs = append(recs, r)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("hsm/pkcs11: read key records: %w", err)
	}
	sort.Slice(recs, func(i, j int) bool {
		if !recs[i].Created.Equal(recs[j].Created) {
			return recs[i].Created.Before(recs[j].Created)
		}
		return recs[i].ID < recs[j].ID
	})
	return recs, nil
}

// Keys lists the partition's keys from the module's records; it works while
// sealed and without the token.
func (p *Partition) Keys() ([]hsm.KeyInfo, error) {
	recs, err := p.records()
	if err != nil {
		return nil, err
	}
	out := make([]hsm.KeyInfo, 0, len(recs))
	for i := range recs {
		info, err := recs[i].info()
		if err != nil {
			return nil, err
		}
		out = append(out, info)
	}
	return out, nil
}

// Key finds a key by ID (hex, any case), by label, or by a "pkcs11:" URI
// whose id= or object= attribute names it.
func (p *Partition) Key(idOrLabel string) (hsm.KeyInfo, error) {
	rec, err := p.record(idOrLabel)
	if err != nil {
		return hsm.KeyInfo{}, err
	}
	return rec.info()
}

func (p *Partition) record(idOrLabel string) (*keyRecord, error) {
	recs, err := p.records()
	if err != nil {
		return nil, err
	}
	var match func(r *keyRecord) bool
	if strings.HasPrefix(idOrLabel, uriScheme) {
		u, err := ParseURI(idOrLabel)
		if err != nil {
			return nil, err
		}
		if u.ID == nil && u.Object == "" {
			return nil, fmt.Errorf("hsm/pkcs11: key URI %s has neither id= nor object=", idOrLabel)
		}
		match = func(r *keyRecord) bool {
			return (u.ID == nil || hex.EncodeToString(u.ID) == r.ID) && (u.Object == "" || u.Object == r.Label)
		}
	} else {
		lower := strings.ToLower(idOrLabel)
		match = func(r *keyRecord) bool { return r.ID == lower || r.Label == idOrLabel }
	}
	for i := range recs {
		if match(&recs[i]) {
			return &recs[i], nil
		}
	}
	return nil, fmt.Errorf("%w: %q in partition %s", hsm.ErrKeyNotFound, idOrLabel, p.name)
}

// KeyURI returns the RFC 7512 URI of a key on the token (token attributes,
// id and object), as pkcs11-tool and p11-kit accept it.
func (p *Partition) KeyURI(idOrLabel string) (string, error) {
	rec, err := p.record(idOrLabel)
	if err != nil {
		return "", err
	}
	idb, _ := hex.DecodeString(rec.ID)
	p.mu.RLock()
	u := *p.sel
	p.mu.RUnlock()
	u.ID, u.Object, u.Type = idb, rec.Label, "private"
	return u.String(), nil
}

// tokenSigner returns this activation's crypto11 handle on key id, finding
// it on the token on first use and checking that its public key is the
// one recorded at generation. p.mu must be held for reading.
func (p *Partition) tokenSigner(rec *keyRecord) (crypto11.Signer, error) {
	p.smu.Lock()
	s, ok := p.signers[rec.ID]
	p.smu.Unlock()
	if ok {
		return s, nil
	}
	idb, err := hex.DecodeString(rec.ID)
	if err != nil {
		return nil, &hsm.KeyLoadError{ID: rec.ID, Err: err}
	}
	found, err := p.ctx.FindKeyPairs(idb, []byte(rec.Label))
	if err != nil {
		return nil, p.libErr("find key "+rec.ID, err)
	}
	if len(found) > 1 {
		return nil, &hsm.KeyLoadError{ID: rec.ID, Err: fmt.Errorf("%d key pairs on the token carry this ID and label", len(found))}
	}
	if len(found) == 0 {
		return nil, fmt.Errorf("%w: key %s (%s) is recorded in the module but not on the token", hsm.ErrKeyNotFound, rec.ID, rec.Label)
	}
	s = found[0]
	der, err := x509.MarshalPKIXPublicKey(s.Public())
	if err != nil || !bytes.Equal(der, rec.Public) {
		return nil, &hsm.KeyLoadError{ID: rec.ID, Err: errors.New("the key on the token does not match the public key recorded at generation")}
	}
	p.smu.Lock()
	if p.signers == nil {
		p.signers = map[string]crypto11.Signer{}
	}
	p.signers[rec.ID] = s
	p.smu.Unlock()
	return s, nil
}

// DestroyKey deletes a key pair from the token and its record. Requires
// active.
func (p *Partition) DestroyKey(idOrLabel string) error {
	p.keyMu.Lock()
	defer p.keyMu.Unlock()
	rec, err := p.record(idOrLabel)
	if err != nil {
		return err
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.ctx == nil {
		return p.sealedErr()
	}
	s, err := p.tokenSigner(rec)
	if err != nil && !errors.Is(err, hsm.ErrKeyNotFound) {
		return err
	}
	if s != nil {
		if err := s.Delete(); err != nil {
			return p.libErr("destroy key "+rec.ID, err)
		}
	}
	err = p.m.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(keysBucket)).Bucket([]byte(p.name))
		if b == nil {
			return nil
		}
		return b.Delete([]byte(rec.ID))
	})
	if err != nil {
		return fmt.Errorf("hsm/pkcs11: delete key record: %w", err)
	}
	p.smu.Lock()
	delete(p.signers, rec.ID)
	p.smu.Unlock()
	if _, err := p.m.log.Append("key-destroy", p.name, map[string]string{"key": rec.ID, "label": rec.Label}); err != nil {
		return fmt.Errorf("hsm/pkcs11: key %s destroyed but not audited: %w", rec.ID, err)
	}
	return nil
}

// Signer returns the key as a crypto.Signer. It can be obtained while
// sealed; Sign returns an error wrapping hsm.ErrSealed until the partition
// is active.
func (p *Partition) Signer(idOrLabel string) (crypto.Signer, error) {
	rec, err := p.record(idOrLabel)
	if err != nil {
		return nil, err
	}
	info, err := rec.info()
	if err != nil {
		return nil, err
	}
	return &keySigner{p: p, rec: *rec, pub: info.Public}, nil
}

// keySigner is a partition key as a crypto.Signer.
type keySigner struct {
	p   *Partition
	rec keyRecord
	pub crypto.PublicKey
}

// Public returns the public key recorded at generation.
func (s *keySigner) Public() crypto.PublicKey { return s.pub }

// Sign signs digest on the token. The audit record (key ID, digest, hash)
// is written to the audit segment before the token signs, and the
// signature is withheld if the log cannot keep it within its bound on
// unsynced records (hsm/audit); a per-operation partition seals itself
// after its last signature. ECDSA signatures are ASN.1 DER; RSA supports PKCS#1 v1.5
// and PSS (opts *rsa.PSSOptions).
func (s *keySigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	p := s.p
	if opts == nil {
		return nil, errors.New("hsm/pkcs11: sign: opts is nil")
	}
	if h := opts.HashFunc(); h != 0 && len(digest) != h.Size() {
		return nil, fmt.Errorf("hsm/pkcs11: sign: digest is %d bytes, %v needs %d", len(digest), h, h.Size())
	}
	switch s.pub.(type) {
	case *rsa.PublicKey:
		if opts.HashFunc() == 0 {
			return nil, errors.New("hsm/pkcs11: sign: RSA signatures need a hash function in opts")
		}
	case *ecdsa.PublicKey:
	}
	p.mu.RLock()
	if p.ctx == nil {
		err := p.sealedErr()
		p.mu.RUnlock()
		return nil, err
	}
	gen := p.gen
	last := false
	if p.cfg.Policy == hsm.PolicyPerOperation {
		left := p.budget.Add(-1)
		if left < 0 {
			p.mu.RUnlock()
			return nil, fmt.Errorf("%w: %s (per-operation signature budget spent)", hsm.ErrSealed, p.name)
		}
		last = left == 0
	}
	ts, err := p.tokenSigner(&s.rec)
	if err != nil {
		p.mu.RUnlock()
		if last {
			p.sealAfterOperation(gen)
		}
		return nil, err
	}
	// The audit record holds the digest, or for a signature over a whole
	// message its SHA-256, as hsm/soft records it.
	recorded, hashName := digest, opts.HashFunc().String()
	if opts.HashFunc() == 0 {
		sum := sha256.Sum256(digest)
		recorded, hashName = sum[:], "message-sha256"
	}
	ticket, err := p.m.log.BeginSign(p.name, s.rec.ID, hashName, recorded)
	if err != nil {
		p.mu.RUnlock()
		if last {
			p.sealAfterOperation(gen)
		}
		return nil, fmt.Errorf("hsm/pkcs11: sign with key %s refused: audit log: %w", s.rec.ID, err)
	}
	sig, serr := ts.Sign(nil, digest, opts)
	p.mu.RUnlock()
	werr := p.m.log.Wait(ticket)
	if last {
		p.sealAfterOperation(gen)
	}
	if serr != nil {
		if tokenGone(serr) {
			p.tokenFailed(gen, serr)
			return nil, fmt.Errorf("hsm/pkcs11: sign with key %s: %w: %w", s.rec.ID, ErrTokenUnavailable, serr)
		}
		return nil, fmt.Errorf("hsm/pkcs11: sign with key %s: %w", s.rec.ID, serr)
	}
	if werr != nil {
		clear(sig)
		return nil, fmt.Errorf("hsm/pkcs11: signature with key %s withheld: audit record not committed: %w", s.rec.ID, werr)
	}
	return sig, nil
}

var _ hsm.AuditSyncer = (*keySigner)(nil)

// SyncAudit makes the audit records of every signature released so far
// durable; see hsm.AuditSyncer.
func (s *keySigner) SyncAudit() error {
	if err := s.p.m.log.SyncWritten(); err != nil {
		return fmt.Errorf("hsm/pkcs11: %w", err)
	}
	return nil
}

// sealAfterOperation seals a per-operation activation gen whose budget is
// spent.
func (p *Partition) sealAfterOperation(gen uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ctx == nil || p.gen != gen {
		return
	}
	if err := p.sealLocked("per-operation signatures spent"); err != nil {
		p.m.opts.Logger.Warn("hsm/pkcs11: sealing after the operation", "partition", p.name, "err", err)
	}
}
