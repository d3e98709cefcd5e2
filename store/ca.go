package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/hsmca/hsmca/ca"
)

var _ ca.Store = (*Store)(nil)

// Buckets behind ca.Store:
//
//	ca_certs        serial (lower-case hex) → record: 4-byte length, JSON metadata, raw DER
//	ca_revoked      issuer \x00 serial → revoked at (8 bytes, Unix ns), not after (8 bytes, Unix ns), reason (1 byte)
//	ca_crl_numbers  issuer → last CRL number handed out (8 bytes, big-endian)
//	ca_crls         issuer → CRL number (8 bytes) + latest CRL DER
var (
	bucketCACerts      = []byte("ca_certs")
	bucketCARevoked    = []byte("ca_revoked")
	bucketCACRLNumbers = []byte("ca_crl_numbers")
	bucketCACRLs       = []byte("ca_crls")
)

// caBuckets are the buckets behind ca.Store.
var caBuckets = [][]byte{bucketCACerts, bucketCARevoked, bucketCACRLNumbers, bucketCACRLs}

// caRecordMeta is a ca.Record without its DER, as stored.
type caRecordMeta struct {
	Issuer     string    `json:"i"`
	Profile    string    `json:"p"`
	Status     ca.Status `json:"s"`
	Final      bool      `json:"f,omitempty"`
	Precert    bool      `json:"pc,omitempty"`
	Names      []string  `json:"n,omitempty"`
	NotBefore  time.Time `json:"nb"`
	NotAfter   time.Time `json:"na"`
	Created    time.Time `json:"c"`
	RevokedAt  time.Time `json:"ra,omitzero"`
	Reason     int       `json:"r,omitempty"`
	CTFailures []string  `json:"ct,omitempty"`
}

// caRevokedValue encodes a revoked-index entry compactly: a CRL of 100,000
// entries reads them all.
func caRevokedValue(r ca.Record) []byte {
	v := binary.BigEndian.AppendUint64(nil, caNanos(r.RevokedAt))
	v = binary.BigEndian.AppendUint64(v, caNanos(r.NotAfter))
	return append(v, byte(r.Reason))
}

// caNanos and caTime map a time to Unix nanoseconds and back, the zero
// time to 0.
func caNanos(t time.Time) uint64 {
	if t.IsZero() {
		return 0
	}
	return uint64(t.UnixNano())
}

func caTime(n uint64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, int64(n)).UTC()
}

func caDecodeRevoked(k, v []byte, prefixLen int) (ca.RevokedEntry, error) {
	if len(v) != 17 {
		return ca.RevokedEntry{}, fmt.Errorf("store: revoked entry %q is corrupt", k)
	}
	return ca.RevokedEntry{
		Serial:    string(k[prefixLen:]),
		RevokedAt: caTime(binary.BigEndian.Uint64(v)),
		NotAfter:  caTime(binary.BigEndian.Uint64(v[8:])),
		Reason:    int(v[16]),
	}, nil
}

func caEncodeRecord(r ca.Record) ([]byte, error) {
	meta, err := json.Marshal(caRecordMeta{
		Issuer: r.Issuer, Profile: r.Profile, Status: r.Status, Final: r.Final, Precert: r.Precert,
		Names: r.Names, NotBefore: r.NotBefore, NotAfter: r.NotAfter, Created: r.Created,
		RevokedAt: r.RevokedAt, Reason: r.Reason, CTFailures: r.CTFailures,
	})
	if err != nil {
		return nil, err
	}
	out := make([]byte, 4, 4+len(meta)+len(r.DER))
	binary.BigEndian.PutUint32(out, uint32(len(meta)))
	out = append(out, meta...)
	return append(out, r.DER...), nil
}

// caDecodeRecord decodes a stored record; withDER copies the DER out too.
func caDecodeRecord(serial string, v []byte, withDER bool) (ca.Record, error) {
	if len(v) < 4 {
		return ca.Record{}, fmt.Errorf("store: record %s is corrupt", serial)
	}
	n := binary.BigEndian.Uint32(v)
	if uint64(n) > uint64(len(v)-4) {
		return ca.Record{}, fmt.Errorf("store: record %s is corrupt", serial)
	}
	var m caRecordMeta
	if err := json.Unmarshal(v[4:4+n], &m); err != nil {
		return ca.Record{}, fmt.Errorf("store: record %s: %w", serial, err)
	}
	r := ca.Record{
		Serial: serial, Issuer: m.Issuer, Profile: m.Profile, Status: m.Status, Final: m.Final, Precert: m.Precert,
		Names: m.Names, NotBefore: m.NotBefore, NotAfter: m.NotAfter, Created: m.Created,
		RevokedAt: m.RevokedAt, Reason: m.Reason, CTFailures: m.CTFailures,
	}
	if withDER {
		r.DER = bytes.Clone(v[4+n:])
	}
	return r, nil
}

func caRevokedKey(issuer, serial string) []byte {
	return append(append([]byte(issuer), 0), serial...)
}

// ReserveSerial implements ca.Store. The record is durable (in the CA
// record log, see calog.go) when it returns; concurrent writes share one
// fdatasync.
func (s *Store) ReserveSerial(ctx context.Context, rec ca.Record) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if rec.Serial == "" {
		return errors.New("store: empty serial")
	}
	_, err := s.calog.write(rec.Serial, func(_ ca.Record, exists bool, next *ca.Record) error {
		if exists {
			return ca.ErrSerialExists
		}
		*next = rec
		return nil
	})
	return err
}

// StoreIssued implements ca.Store.
func (s *Store) StoreIssued(ctx context.Context, serial string, der []byte, ctFailures []string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	_, err := s.calog.write(serial, func(cur ca.Record, exists bool, next *ca.Record) error {
		if !exists {
			return ca.ErrUnknownSerial
		}
		if cur.Status == ca.StatusRefused {
			return fmt.Errorf("store: serial %s was refused by the lints; no final certificate may be stored", serial)
		}
		r := cur
		r.DER = der
		r.Final = true
		r.Precert = false
		r.CTFailures = ctFailures
		if r.Status == ca.StatusPending {
			r.Status = ca.StatusValid
		}
		*next = r
		return nil
	})
	return err
}

// CertBySerial implements ca.Store.
func (s *Store) CertBySerial(ctx context.Context, serial string) (ca.Record, error) {
	if err := ctx.Err(); err != nil {
		return ca.Record{}, err
	}
	if r, ok := s.calog.lookup(serial); ok {
		return r, nil
	}
	var r ca.Record
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketCACerts).Get([]byte(serial))
		if v == nil {
			return ca.ErrUnknownSerial
		}
		var err error
		r, err = caDecodeRecord(serial, v, true)
		return err
	})
	return r, err
}

// ListCerts implements ca.Store; records come in serial order. It folds
// the CA record log into bbolt first.
func (s *Store) ListCerts(ctx context.Context, q ca.Query) ([]ca.Record, error) {
	if err := s.calog.fold(); err != nil {
		return nil, err
	}
	var out []ca.Record
	err := s.db.View(func(tx *bolt.Tx) error {
		cur := tx.Bucket(bucketCACerts).Cursor()
		var k, v []byte
		if q.After != "" {
			k, v = cur.Seek([]byte(q.After))
			if k != nil && string(k) == q.After {
				k, v = cur.Next()
			}
		} else {
			k, v = cur.First()
		}
		for n := 0; k != nil; k, v = cur.Next() {
			if n++; n%4096 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			r, err := caDecodeRecord(string(k), v, false)
			if err != nil {
				return err
			}
			if !caMatch(r, q) {
				continue
			}
			r.DER = bytes.Clone(v[4+binary.BigEndian.Uint32(v):])
			out = append(out, r)
			if q.Limit > 0 && len(out) >= q.Limit {
				break
			}
		}
		return nil
	})
	return out, err
}

func caMatch(r ca.Record, q ca.Query) bool {
	if q.Issuer != "" && r.Issuer != q.Issuer || q.Profile != "" && r.Profile != q.Profile {
		return false
	}
	if len(q.Status) > 0 {
		ok := false
		for _, st := range q.Status {
			ok = ok || r.Status == st
		}
		if !ok {
			return false
		}
	}
	if !q.NotAfterBefore.IsZero() && !r.NotAfter.Before(q.NotAfterBefore) {
		return false
	}
	if !q.NotAfterAfter.IsZero() && !r.NotAfter.After(q.NotAfterAfter) {
		return false
	}
	return true
}

// UpdateRevocation implements ca.Store. update may change Status,
// RevokedAt and Reason only; other changes are ignored. update runs while
// writes to the store wait, so it must be quick and must not call the
// store.
func (s *Store) UpdateRevocation(ctx context.Context, serial string, update func(*ca.Record) error) (ca.Record, error) {
	if err := ctx.Err(); err != nil {
		return ca.Record{}, err
	}
	return s.calog.write(serial, func(cur ca.Record, exists bool, next *ca.Record) error {
		if !exists {
			return ca.ErrUnknownSerial
		}
		changed := cur
		if err := update(&changed); err != nil {
			return err
		}
		r := cur
		r.Status, r.RevokedAt, r.Reason = changed.Status, changed.RevokedAt, changed.Reason
		*next = r
		return nil
	})
}

// RevokedSerials implements ca.Store.
func (s *Store) RevokedSerials(ctx context.Context, issuer string) ([]ca.RevokedEntry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.calog.fold(); err != nil {
		return nil, err
	}
	var out []ca.RevokedEntry
	prefix := append([]byte(issuer), 0)
	err := s.db.View(func(tx *bolt.Tx) error {
		cur := tx.Bucket(bucketCARevoked).Cursor()
		for k, v := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = cur.Next() {
			e, err := caDecodeRevoked(k, v, len(prefix))
			if err != nil {
				return err
			}
			out = append(out, e)
		}
		return nil
	})
	return out, err
}

// NextCRLNumber implements ca.Store.
func (s *Store) NextCRLNumber(ctx context.Context, issuer string) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var n uint64
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCACRLNumbers)
		if v := b.Get([]byte(issuer)); len(v) == 8 {
			n = binary.BigEndian.Uint64(v)
		}
		n++
		return b.Put([]byte(issuer), binary.BigEndian.AppendUint64(nil, n))
	})
	return n, err
}

// SaveCRL implements ca.Store.
func (s *Store) SaveCRL(ctx context.Context, issuer string, number uint64, der []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCACRLs)
		if v := b.Get([]byte(issuer)); len(v) >= 8 && binary.BigEndian.Uint64(v) > number {
			return nil
		}
		return b.Put([]byte(issuer), append(binary.BigEndian.AppendUint64(nil, number), der...))
	})
}

// LatestCRL implements ca.Store.
func (s *Store) LatestCRL(ctx context.Context, issuer string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var der []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketCACRLs).Get([]byte(issuer))
		if len(v) < 8 {
			return ca.ErrNoCRL
		}
		der = bytes.Clone(v[8:])
		return nil
	})
	return der, err
}
