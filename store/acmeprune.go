package store

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/hsmca/hsmca/acme"
	bolt "go.etcd.io/bbolt"
)

var _ acme.Pruner = (*Store)(nil)

// pruneScan is how many records one read transaction of a pass examines.
const pruneScan = 1024

// PruneACME implements acme.Pruner. A pass walks the account→order index
// (so it has the index key of every order it deletes), then the
// authorizations, then the certificate links. Candidates are found in
// read transactions; each write transaction (through the group committer,
// so it shares commits with the requests) re-reads every candidate,
// deletes it only if the policy still lets it go, and removes its index
// entries and work records with it. Deleted records become tombstones in
// the record cache once the write has committed.
func (s *Store) PruneACME(ctx context.Context, p acme.PrunePolicy) (acme.PruneStats, error) {
	if p.Batch <= 0 {
		p.Batch = 256
	}
	var st acme.PruneStats
	kinds := []pruneKind{
		{bucket: bAcctOrder, count: &st.Orders, pick: s.pickOrder, drop: dropOrder},
		{bucket: bAuthz, count: &st.Authzs, pick: pickAuthz, drop: dropAuthz},
		{bucket: bACert, count: &st.Certs, pick: pickCert, drop: dropCert},
	}
	for _, k := range kinds {
		done, err := s.pruneKind(ctx, p, k, &st)
		if err != nil || !done {
			return st, err
		}
	}
	st.Complete = true
	return st, nil
}

// pruneKind deletes one kind of record. pick reports whether the record
// under key k (value v) of the scanned bucket may go; drop deletes it in
// a write transaction if it still may, and returns the cache key it
// deleted (kind 0: none, for a dangling index entry).
type pruneKind struct {
	bucket []byte
	count  *int
	pick   func(tx *bolt.Tx, p acme.PrunePolicy, k, v []byte) (bool, error)
	drop   func(tx *bolt.Tx, p acme.PrunePolicy, k []byte) (cacheKey, bool, error)
}

func (s *Store) pruneKind(ctx context.Context, p acme.PrunePolicy, k pruneKind, st *acme.PruneStats) (done bool, err error) {
	var after []byte // last key examined
	for {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		left := p.Batch
		if p.MaxDeletes > 0 {
			left = min(left, p.MaxDeletes-st.Orders-st.Authzs-st.Certs)
		}
		if left <= 0 {
			return false, nil
		}
		var cands [][]byte
		end := false
		err := s.view(func(tx *bolt.Tx) error {
			c := tx.Bucket(k.bucket).Cursor()
			key, val := c.First()
			if after != nil {
				key, val = c.Seek(after)
				if bytes.Equal(key, after) {
					key, val = c.Next()
				}
			}
			for n := 0; ; key, val = c.Next() {
				if key == nil {
					end = true
					return nil
				}
				if n == pruneScan || len(cands) == left {
					return nil
				}
				n++
				st.Scanned++
				after = append(after[:0], key...)
				ok, err := k.pick(tx, p, key, val)
				if err != nil {
					return err
				}
				if ok {
					cands = append(cands, append([]byte(nil), key...))
				}
			}
		})
		if err != nil {
			return false, err
		}
		if len(cands) > 0 {
			n, err := s.dropBatch(p, k, cands)
			*k.count += n
			if err != nil {
				return false, err
			}
		}
		if end {
			return true, nil
		}
	}
}

// dropBatch deletes the candidates in one durable write transaction and
// then turns their cache entries into tombstones.
func (s *Store) dropBatch(p acme.PrunePolicy, k pruneKind, cands [][]byte) (int, error) {
	g := s.committer()
	var ver version
	var gone []cacheKey
	var n int
	err := g.do(func(tx *bolt.Tx) error {
		gone, n = gone[:0], 0 // fn may run again
		for _, key := range cands {
			ck, ok, err := k.drop(tx, p, key)
			if err != nil {
				return err
			}
			if ok {
				n++
				if ck.kind != 0 {
					gone = append(gone, ck)
				}
			}
		}
		ver = version{uint64(tx.ID()), g.cache.seq.Add(1)}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, ck := range gone {
		g.cache.del(ck, ver)
	}
	return n, nil
}

func decodeRecord(b []byte, v any, what string, key []byte) error {
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("store: prune: decode %s %s: %w", what, key, err)
	}
	return nil
}

// pickOrder looks at an account→order index entry (value: order ID). An
// entry whose order is gone is a candidate too: dropping it only removes
// the index entry.
func (s *Store) pickOrder(tx *bolt.Tx, p acme.PrunePolicy, _, id []byte) (bool, error) {
	b := tx.Bucket(bOrder).Get(id)
	if b == nil {
		return true, nil
	}
	// Only the fields the policy reads are decoded: a pass reads every
	// record, and these are the cheap part of each.
	var o struct {
		Status  string    `json:"s"`
		Expires time.Time `json:"e"`
	}
	if err := decodeRecord(b, &o, "order", id); err != nil {
		return false, err
	}
	return p.PruneOrder(&acme.Order{Status: o.Status, Expires: o.Expires}), nil
}

func dropOrder(tx *bolt.Tx, p acme.PrunePolicy, idxKey []byte) (cacheKey, bool, error) {
	idx := tx.Bucket(bAcctOrder)
	id := idx.Get(idxKey)
	if id == nil {
		return cacheKey{}, false, nil // gone already (a rerun of this batch)
	}
	id = append([]byte(nil), id...)
	orders := tx.Bucket(bOrder)
	if b := orders.Get(id); b != nil {
		o := new(acme.Order)
		if err := decodeRecord(b, o, "order", id); err != nil {
			return cacheKey{}, false, err
		}
		if !p.PruneOrder(o) {
			return cacheKey{}, false, nil
		}
		if err := orders.Delete(id); err != nil {
			return cacheKey{}, false, err
		}
		if err := tx.Bucket(bWork).Delete([]byte(acme.WorkFinalize + string(id))); err != nil {
			return cacheKey{}, false, err
		}
	}
	if err := idx.Delete(idxKey); err != nil {
		return cacheKey{}, false, err
	}
	return cacheKey{'o', string(id)}, true, nil
}

func pickAuthz(_ *bolt.Tx, p acme.PrunePolicy, id, v []byte) (bool, error) {
	var a struct {
		Expires time.Time `json:"e"`
	}
	if err := decodeRecord(v, &a, "authz", id); err != nil {
		return false, err
	}
	return p.PruneAuthz(&acme.Authz{Expires: a.Expires}), nil
}

func dropAuthz(tx *bolt.Tx, p acme.PrunePolicy, id []byte) (cacheKey, bool, error) {
	authzs := tx.Bucket(bAuthz)
	b := authzs.Get(id)
	if b == nil {
		return cacheKey{}, false, nil
	}
	a := new(acme.Authz)
	if err := decodeRecord(b, a, "authz", id); err != nil {
		return cacheKey{}, false, err
	}
	if !p.PruneAuthz(a) {
		return cacheKey{}, false, nil
	}
	// The reuse index entry loses a's ID (and those of authorizations
	// already gone); an entry left empty is deleted.
	if err := rewriteAuthzIdx(tx, authzIdxKey(a.AccountID, a.Identifier, a.Wildcard), a.ID, ""); err != nil {
		return cacheKey{}, false, err
	}
	for _, c := range a.Challenges {
		if c == nil {
			continue
		}
		if err := tx.Bucket(bWork).Delete([]byte(acme.WorkValidate + a.ID + "/" + c.Type)); err != nil {
			return cacheKey{}, false, err
		}
	}
	if err := authzs.Delete(id); err != nil {
		return cacheKey{}, false, err
	}
	return cacheKey{'z', string(id)}, true, nil
}

func pickCert(_ *bolt.Tx, p acme.PrunePolicy, serial, v []byte) (bool, error) {
	var c struct {
		NotAfter time.Time `json:"na"`
	}
	if err := decodeRecord(v, &c, "certificate link", serial); err != nil {
		return false, err
	}
	return p.PruneCert(&acme.Cert{NotAfter: c.NotAfter}), nil
}

func dropCert(tx *bolt.Tx, p acme.PrunePolicy, serial []byte) (cacheKey, bool, error) {
	certs := tx.Bucket(bACert)
	b := certs.Get(serial)
	if b == nil {
		return cacheKey{}, false, nil
	}
	c := new(acme.Cert)
	if err := decodeRecord(b, c, "certificate link", serial); err != nil {
		return cacheKey{}, false, err
	}
	if !p.PruneCert(c) {
		return cacheKey{}, false, nil
	}
	if err := certs.Delete(serial); err != nil {
		return cacheKey{}, false, err
	}
	return cacheKey{'c', string(serial)}, true, nil
}
