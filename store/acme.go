package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/hsmca/hsmca/acme"
	bolt "go.etcd.io/bbolt"
)

var (
	bAcct      = []byte("acme-account")
	bAcctKey   = []byte("acme-account-key")   // thumbprint -> account ID
	bOrder     = []byte("acme-order")         //
	bAcctOrder = []byte("acme-account-order") // accountID 0 seq(8) -> order ID
	bAuthz     = []byte("acme-authz")
	bAuthzIdx  = []byte("acme-authz-valid") // accountID 0 type 0 value 0 w -> authz IDs (see indexAuthz)
	bACert     = []byte("acme-cert")        // serial hex -> acme.Cert
	bWork      = []byte("acme-work")        // kind+id -> empty
	bMeta      = []byte("acme-meta")
	bEAB       = []byte("acme-eab")
)

// acmeBuckets are the buckets behind acme.Store.
var acmeBuckets = [][]byte{bAcct, bAcctKey, bOrder, bAcctOrder, bAuthz, bAuthzIdx, bACert, bWork, bMeta, bEAB}

var _ acme.Store = (*Store)(nil)

func getJSON(tx *bolt.Tx, bucket []byte, key string, v any) error {
	b := tx.Bucket(bucket).Get([]byte(key))
	if b == nil {
		return acme.ErrNotFound
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("store: decode %s/%s: %w", bucket, key, err)
	}
	return nil
}

func putJSON(tx *bolt.Tx, bucket []byte, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("store: encode %s: %w", bucket, err)
	}
	return tx.Bucket(bucket).Put([]byte(key), b)
}

func (s *Store) view(fn func(tx *bolt.Tx) error) error { return s.db.View(fn) }

// committers holds the group committer of each open database (keyed by
// *bolt.DB). A committer holds no goroutine or file, only a queue.
var committers sync.Map

// batch runs fn in a durable write transaction, grouped with the ACME
// writes that arrive while another commit is under way (group commit):
// the first writer commits at once, without bbolt's batch delay; writers
// that queue meanwhile share the next commit and its fsyncs. Under load
// this groups every write that waited, however long the commit took,
// where db.Batch groups only what arrives within MaxBatchDelay. fn may run
// more than once (when another fn of its group fails) and must be
// idempotent. Every call returns only after its write is on disk.
func (s *Store) batch(fn func(tx *bolt.Tx) error) error { return s.committer().do(fn) }

// committer returns the group committer (and record cache) of s's database.
func (s *Store) committer() *groupCommitter {
	g, ok := committers.Load(s.db)
	if !ok {
		g, _ = committers.LoadOrStore(s.db, &groupCommitter{db: s.db})
	}
	return g.(*groupCommitter)
}

// groupCommitter runs write transactions for queued callers, one group at
// a time. The caller that finds it idle becomes the leader: it commits the
// whole queue (its own call included) in one transaction, then hands the
// lead to the first caller that queued during that commit, so that no
// caller commits other callers' groups after its own is done.
type groupCommitter struct {
	db    *bolt.DB
	mu    sync.Mutex
	queue []*groupCall
	busy  bool // a leader is committing or about to

	cache recordCache // decoded ACME records of this database
}

type groupCall struct {
	fn       func(*bolt.Tx) error
	res      chan error // capacity 1: errLead, then the result
	answered bool       // the result was sent (set by the leader only)
}

// errLead tells a queued caller that it leads the next commit.
var errLead = errors.New("store: lead the next group commit")

// maxGroup bounds one transaction's size; the rest waits for the next.
const maxGroup = 256

func (g *groupCommitter) do(fn func(*bolt.Tx) error) error {
	c := &groupCall{fn: fn, res: make(chan error, 1)}
	g.mu.Lock()
	g.queue = append(g.queue, c)
	lead := !g.busy
	g.busy = true
	g.mu.Unlock()
	if !lead {
		if err := <-c.res; err != errLead {
			return err
		}
	}
	g.mu.Lock()
	n := min(len(g.queue), maxGroup)
	group := g.queue[:n:n]
	g.queue = append([]*groupCall(nil), g.queue[n:]...)
	g.mu.Unlock()
	g.lead(group)
	return <-c.res
}

// lead commits group and then passes the lead on. If the commit does not
// return (a panic in bbolt itself, or runtime.Goexit in a function), the
// callers not yet answered get an error and the lead is still passed on,
// so that later writers are not left queued forever; a panic then goes on.
func (g *groupCommitter) lead(group []*groupCall) {
	done := false
	defer func() {
		if !done {
			p := recover()
			for _, c := range group {
				if !c.answered {
					c.answered = true
					c.res <- fmt.Errorf("store: group commit did not complete: %v", p)
				}
			}
			g.passLead()
			if p != nil {
				panic(p)
			}
			return
		}
		g.passLead()
	}()
	g.commit(group)
	done = true
}

func (g *groupCommitter) passLead() {
	g.mu.Lock()
	if len(g.queue) > 0 {
		g.queue[0].res <- errLead
	} else {
		g.busy = false
	}
	g.mu.Unlock()
}

// commit runs the group's functions in one transaction and tells each
// caller its result. If one function fails, its caller gets that error
// (after a retry alone, as bbolt's Batch does) and the others are
// committed without it.
func (g *groupCommitter) commit(group []*groupCall) {
	for len(group) > 0 {
		failed := -1
		err := g.db.Update(func(tx *bolt.Tx) error {
			for i, c := range group {
				if err := safeCall(c.fn, tx); err != nil {
					failed = i
					return err
				}
			}
			return nil
		})
		if failed < 0 {
			for _, c := range group {
				c.answered = true
				c.res <- err // nil, or a commit error every caller shares
			}
			return
		}
		c := group[failed]
		group = append(group[:failed:failed], group[failed+1:]...)
		err = g.db.Update(func(tx *bolt.Tx) error { return safeCall(c.fn, tx) })
		c.answered = true
		c.res <- err
	}
}

// safeCall turns a panic in fn into an error, so that the other callers
// of its group are not left waiting.
func safeCall(fn func(*bolt.Tx) error, tx *bolt.Tx) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("store: write panicked: %v", p)
		}
	}()
	return fn(tx)
}

// CreateAccount implements acme.Store. The key is checked before the EAB
// key, so that a request racing another with the same account key gets
// ErrConflict (and then the account) rather than ErrEABBound.
func (s *Store) CreateAccount(_ context.Context, a *acme.Account) error {
	return s.batch(func(tx *bolt.Tx) error {
		keys := tx.Bucket(bAcctKey)
		if keys.Get([]byte(a.KeyThumb)) != nil {
			return acme.ErrConflict
		}
		if a.EABKeyID != "" {
			if err := claimEAB(tx, a.EABKeyID, a.ID); err != nil {
				return err
			}
		}
		if err := keys.Put([]byte(a.KeyThumb), []byte(a.ID)); err != nil {
			return err
		}
		return putJSON(tx, bAcct, a.ID, a)
	})
}

// claimEAB binds EAB key keyID to account accountID, in the account's
// creation transaction; bbolt runs one write transaction at a time, so
// of two accounts claiming one key the second sees the first's claim.
func claimEAB(tx *bolt.Tx, keyID, accountID string) error {
	var e acme.EAB
	if err := getJSON(tx, bEAB, keyID, &e); err != nil {
		return err
	}
	switch {
	case e.Revoked:
		return acme.ErrEABRevoked
	case e.AccountID != "" && e.AccountID != accountID:
		return acme.ErrEABBound
	}
	e.AccountID = accountID
	return putJSON(tx, bEAB, keyID, &e)
}

// GetAccount implements acme.Store.
func (s *Store) GetAccount(_ context.Context, id string) (*acme.Account, error) {
	a := new(acme.Account)
	return a, s.view(func(tx *bolt.Tx) error { return getJSON(tx, bAcct, id, a) })
}

// GetAccountByKey implements acme.Store.
func (s *Store) GetAccountByKey(_ context.Context, thumb string) (*acme.Account, error) {
	a := new(acme.Account)
	return a, s.view(func(tx *bolt.Tx) error {
		id := tx.Bucket(bAcctKey).Get([]byte(thumb))
		if id == nil {
			return acme.ErrNotFound
		}
		return getJSON(tx, bAcct, string(id), a)
	})
}

// UpdateAccount implements acme.Store.
func (s *Store) UpdateAccount(_ context.Context, a *acme.Account, oldThumb string) error {
	return s.batch(func(tx *bolt.Tx) error {
		// The key index moves from the stored key, which the caller must
		// have read: a caller with a stale oldThumb would otherwise drop
		// the wrong index entry and leave the real old key indexed.
		var cur acme.Account
		if err := getJSON(tx, bAcct, a.ID, &cur); err != nil {
			return err
		}
		if cur.KeyThumb != oldThumb {
			return acme.ErrConflict
		}
		if a.KeyThumb != oldThumb {
			keys := tx.Bucket(bAcctKey)
			if keys.Get([]byte(a.KeyThumb)) != nil {
				return acme.ErrConflict
			}
			if err := keys.Delete([]byte(oldThumb)); err != nil {
				return err
			}
			if err := keys.Put([]byte(a.KeyThumb), []byte(a.ID)); err != nil {
				return err
			}
		}
		return putJSON(tx, bAcct, a.ID, a)
	})
}

// CreateOrder implements acme.Store.
func (s *Store) CreateOrder(_ context.Context, o *acme.Order, authzs []*acme.Authz) error {
	puts := []cachePut{orderPut(o)}
	for _, a := range authzs {
		puts = append(puts, authzPut(a))
	}
	return s.batchCache(func(tx *bolt.Tx) error {
		for _, a := range authzs {
			if err := putJSON(tx, bAuthz, a.ID, a); err != nil {
				return err
			}
		}
		if err := indexNewOrder(tx, o); err != nil {
			return err
		}
		return putJSON(tx, bOrder, o.ID, o)
	}, puts...)
}

// indexNewOrder adds o to its account's orders list unless o is stored
// already (and so listed).
func indexNewOrder(tx *bolt.Tx, o *acme.Order) error {
	if tx.Bucket(bOrder).Get([]byte(o.ID)) != nil {
		return nil
	}
	ao := tx.Bucket(bAcctOrder)
	seq, err := ao.NextSequence()
	if err != nil {
		return err
	}
	k := make([]byte, 0, len(o.AccountID)+9)
	k = append(append(k, o.AccountID...), 0)
	k = binary.BigEndian.AppendUint64(k, seq)
	return ao.Put(k, []byte(o.ID))
}

// GetOrder implements acme.Store.
func (s *Store) GetOrder(_ context.Context, id string) (*acme.Order, error) {
	k := cacheKey{'o', id}
	if v, ok := s.cache().get(k); ok {
		return cloneOrder(v.(*acme.Order)), nil
	}
	o := new(acme.Order)
	var ver version
	if err := s.view(func(tx *bolt.Tx) error { ver = readVersion(tx); return getJSON(tx, bOrder, id, o) }); err != nil {
		return nil, err
	}
	s.cache().put(k, ver, cloneOrder(o))
	return o, nil
}

func putWork(tx *bolt.Tx, work string, add bool) error {
	if work == "" {
		return nil
	}
	if add {
		return tx.Bucket(bWork).Put([]byte(work), nil)
	}
	return tx.Bucket(bWork).Delete([]byte(work))
}

// UpdateOrder implements acme.Store. It returns acme.ErrNotFound for an
// order that is not stored (pruned), rather than storing it again.
func (s *Store) UpdateOrder(_ context.Context, o *acme.Order, work string, add bool) error {
	return s.batchCache(func(tx *bolt.Tx) error {
		if tx.Bucket(bOrder).Get([]byte(o.ID)) == nil {
			return acme.ErrNotFound // pruned: never write it back
		}
		if err := putWork(tx, work, add); err != nil {
			return err
		}
		return putJSON(tx, bOrder, o.ID, o)
	}, orderPut(o))
}

// ListOrders implements acme.Store. The cursor is the hex sequence number
// of the last order returned.
func (s *Store) ListOrders(_ context.Context, accountID, cursor string, limit int) ([]string, string, error) {
	prefix := append([]byte(accountID), 0)
	start := prefix
	if cursor != "" {
		seq, err := hex.DecodeString(cursor)
		if err != nil || len(seq) != 8 {
			return nil, "", fmt.Errorf("store: bad order cursor: %w", acme.ErrNotFound)
		}
		start = append(append([]byte{}, prefix...), seq...)
		start = append(start, 0) // strictly after the cursor
	}
	var ids []string
	var next string
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bAcctOrder).Cursor()
		var last []byte
		for k, v := c.Seek(start); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			if len(ids) == limit {
				next = hex.EncodeToString(last)
				return nil
			}
			ids = append(ids, string(v))
			last = k[len(prefix):]
		}
		return nil
	})
	return ids, next, err
}

// GetAuthz implements acme.Store.
func (s *Store) GetAuthz(_ context.Context, id string) (*acme.Authz, error) {
	k := cacheKey{'z', id}
	if v, ok := s.cache().get(k); ok {
		return cloneAuthz(v.(*acme.Authz)), nil
	}
	a := new(acme.Authz)
	var ver version
	if err := s.view(func(tx *bolt.Tx) error { ver = readVersion(tx); return getJSON(tx, bAuthz, id, a) }); err != nil {
		return nil, err
	}
	s.cache().put(k, ver, cloneAuthz(a))
	return a, nil
}

func authzIdxKey(accountID string, id acme.Identifier, wildcard bool) []byte {
	w := "0"
	if wildcard {
		w = "1"
	}
	return []byte(accountID + "\x00" + id.Type + "\x00" + id.Value + "\x00" + w)
}

// UpdateAuthz implements acme.Store; like UpdateOrder, it does not bring
// back a pruned authorization.
func (s *Store) UpdateAuthz(_ context.Context, a *acme.Authz, work string, add bool) error {
	return s.batchCache(func(tx *bolt.Tx) error {
		if tx.Bucket(bAuthz).Get([]byte(a.ID)) == nil {
			return acme.ErrNotFound // pruned: never write it back
		}
		if err := putWork(tx, work, add); err != nil {
			return err
		}
		if err := indexAuthz(tx, a); err != nil {
			return err
		}
		return putJSON(tx, bAuthz, a.ID, a)
	}, authzPut(a))
}

// authzIdxMax bounds the authorizations the reuse index keeps for one
// (account, identifier); the oldest go first. An account holds more valid
// ones for one name only if it validates it again and again without
// reuse, and then the newest are the ones worth finding.
const authzIdxMax = 8

// indexAuthz updates the reuse index for a, which is about to be written:
// the entry of a's account and identifier lists the IDs of the valid
// authorizations, oldest first, separated by ",", so that deactivating
// one leaves the others findable (a list of one ID is that ID alone, as
// older stores wrote it).
func indexAuthz(tx *bolt.Tx, a *acme.Authz) error {
	add := ""
	if a.Status == acme.StatusValid {
		add = a.ID
	}
	return rewriteAuthzIdx(tx, authzIdxKey(a.AccountID, a.Identifier, a.Wildcard), a.ID, add)
}

// rewriteAuthzIdx rewrites the reuse index entry k: it keeps the listed
// IDs other than drop whose authorization is still stored and valid, then
// appends add (if not ""; add is drop or ""), keeps the newest authzIdxMax, and deletes the
// entry when nothing is left. Both UpdateAuthz and the pruner (which
// passes the authorization it deletes as drop) go through it, so an entry
// never outlives the authorizations it names.
func rewriteAuthzIdx(tx *bolt.Tx, k []byte, drop, add string) error {
	idx := tx.Bucket(bAuthzIdx)
	cur := idx.Get(k)
	var keep []string
	for _, id := range authzIdxIDs(cur) {
		if id != drop && storedValid(tx, id) {
			keep = append(keep, id)
		}
	}
	if add != "" {
		keep = append(keep, add)
	}
	if len(keep) > authzIdxMax {
		keep = keep[len(keep)-authzIdxMax:]
	}
	v := strings.Join(keep, ",")
	switch {
	case v == string(cur):
		return nil
	case v == "":
		return idx.Delete(k)
	}
	return idx.Put(k, []byte(v))
}

// authzIdxIDs splits a reuse index value into authorization IDs.
func authzIdxIDs(v []byte) []string {
	if len(v) == 0 {
		return nil
	}
	return strings.Split(string(v), ",")
}

// storedValid reports whether authorization id is stored with status
// valid (expiry aside); it decodes only the status.
func storedValid(tx *bolt.Tx, id string) bool {
	b := tx.Bucket(bAuthz).Get([]byte(id))
	if b == nil {
		return false
	}
	var st struct {
		Status string `json:"s"`
	}
	return json.Unmarshal(b, &st) == nil && st.Status == acme.StatusValid
}

// FindValidAuthz implements acme.Store.
func (s *Store) FindValidAuthz(_ context.Context, accountID string, id acme.Identifier, wildcard bool) (*acme.Authz, error) {
	var best *acme.Authz
	err := s.view(func(tx *bolt.Tx) error {
		for _, zid := range authzIdxIDs(tx.Bucket(bAuthzIdx).Get(authzIdxKey(accountID, id, wildcard))) {
			a := new(acme.Authz)
			if err := getJSON(tx, bAuthz, zid, a); errors.Is(err, acme.ErrNotFound) {
				continue // pruned; the next write of this entry drops it
			} else if err != nil {
				return err
			}
			if a.Status == acme.StatusValid && (best == nil || !a.Expires.Before(best.Expires)) {
				best = a
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if best == nil {
		return nil, acme.ErrNotFound
	}
	return best, nil
}

// FinishOrder implements acme.Store.
func (s *Store) FinishOrder(_ context.Context, o *acme.Order, c *acme.Cert) error {
	return s.batchCache(func(tx *bolt.Tx) error {
		if err := putJSON(tx, bACert, c.Serial, c); err != nil {
			return err
		}
		if err := putWork(tx, acme.WorkFinalize+o.ID, false); err != nil {
			return err
		}
		// The certificate is stored whatever happened to the order. If
		// the pruner deleted it (possible only with a retention shorter
		// than the issuance took), it is listed again so that the next
		// pass finds it.
		if err := indexNewOrder(tx, o); err != nil {
			return err
		}
		return putJSON(tx, bOrder, o.ID, o)
	}, orderPut(o), certPut(c))
}

// GetCert implements acme.Store.
func (s *Store) GetCert(_ context.Context, serial string) (*acme.Cert, error) {
	k := cacheKey{'c', serial}
	if v, ok := s.cache().get(k); ok {
		return cloneCert(v.(*acme.Cert)), nil
	}
	c := new(acme.Cert)
	var ver version
	if err := s.view(func(tx *bolt.Tx) error { ver = readVersion(tx); return getJSON(tx, bACert, serial, c) }); err != nil {
		return nil, err
	}
	s.cache().put(k, ver, cloneCert(c))
	return c, nil
}

// UpdateCert implements acme.Store; like UpdateOrder, it does not bring
// back a pruned certificate link.
func (s *Store) UpdateCert(_ context.Context, c *acme.Cert) error {
	return s.batchCache(func(tx *bolt.Tx) error {
		if tx.Bucket(bACert).Get([]byte(c.Serial)) == nil {
			return acme.ErrNotFound // pruned: never write it back
		}
		return putJSON(tx, bACert, c.Serial, c)
	}, certPut(c))
}

// ListWork implements acme.Store.
func (s *Store) ListWork(_ context.Context, kind string) ([]string, error) {
	var out []string
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bWork).Cursor()
		p := []byte(kind)
		for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
			out = append(out, string(k[len(p):]))
		}
		return nil
	})
	return out, err
}

// GetMeta implements acme.Store.
func (s *Store) GetMeta(_ context.Context, key string) ([]byte, error) {
	var out []byte
	err := s.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bMeta).Get([]byte(key))
		if v == nil {
			return acme.ErrNotFound
		}
		out = append([]byte{}, v...)
		return nil
	})
	return out, err
}

// PutMeta implements acme.Store; an empty value deletes the key.
func (s *Store) PutMeta(_ context.Context, key string, val []byte) error {
	return s.batch(func(tx *bolt.Tx) error {
		if len(val) == 0 {
			return tx.Bucket(bMeta).Delete([]byte(key))
		}
		return tx.Bucket(bMeta).Put([]byte(key), val)
	})
}

// PutEAB implements acme.Store.
func (s *Store) PutEAB(_ context.Context, e *acme.EAB) error {
	return s.batch(func(tx *bolt.Tx) error { return putJSON(tx, bEAB, e.KeyID, e) })
}

// RevokeEAB implements acme.Store: read, mark and write in one
// transaction, so that an account creation claiming the key meanwhile
// (claimEAB) keeps its AccountID.
func (s *Store) RevokeEAB(_ context.Context, keyID string) error {
	return s.batch(func(tx *bolt.Tx) error {
		var e acme.EAB
		if err := getJSON(tx, bEAB, keyID, &e); err != nil {
			return err
		}
		e.Revoked, e.Key = true, nil
		return putJSON(tx, bEAB, keyID, &e)
	})
}

// GetEAB implements acme.Store.
func (s *Store) GetEAB(_ context.Context, keyID string) (*acme.EAB, error) {
	e := new(acme.EAB)
	return e, s.view(func(tx *bolt.Tx) error { return getJSON(tx, bEAB, keyID, e) })
}

// ListEAB implements acme.Store.
func (s *Store) ListEAB(_ context.Context) ([]*acme.EAB, error) {
	var out []*acme.EAB
	err := s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bEAB).ForEach(func(k, v []byte) error {
			e := new(acme.EAB)
			if err := json.Unmarshal(v, e); err != nil {
				return fmt.Errorf("store: decode EAB %s: %w", k, err)
			}
			out = append(out, e)
			return nil
		})
	})
	return out, err
}
