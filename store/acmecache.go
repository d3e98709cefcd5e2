package store

import (
	"math"
	"sync"
	"sync/atomic"

	"github.com/hsmca/hsmca/acme"
	bolt "go.etcd.io/bbolt"
)

// recordCache keeps decoded copies of the ACME records an order reads
// again and again (orders, authorizations, certificates), so that a read
// costs a map lookup and a copy instead of a read transaction and a JSON
// decode. It is a cache of the database, never a source: every write
// still commits durably first, and only then is its value cached.
//
// Staleness is ruled out with versions. A write's version is its
// transaction's ID and its position within that transaction; a read's is
// the ID of the snapshot it read (bbolt gives a read transaction the ID of
// the last committed write). A value replaces a cached one only if its
// version is not older, so a read that started before a write committed
// cannot overwrite what the write cached, and a write cached late does not
// overwrite a read of a newer state. Entries are evicted a generation at a
// time; a read older than the newest version evicted is not cached.
//
// The ACME records are written only through this package, by the one
// process that holds the database open, so the cache sees every write.
type recordCache struct {
	seq atomic.Uint64 // position of a write within its transaction

	mu    sync.Mutex
	cur   map[cacheKey]cacheEntry
	prev  map[cacheKey]cacheEntry
	floor version // newest version evicted so far
}

type cacheKey struct {
	kind byte // 'o' order, 'z' authz, 'c' cert
	id   string
}

type cacheEntry struct {
	ver version
	v   any // *acme.Order, *acme.Authz or *acme.Cert, never handed out; nil: deleted
}

type version struct{ tx, seq uint64 }

func (a version) less(b version) bool { return a.tx < b.tx || a.tx == b.tx && a.seq < b.seq }

// readVersion is the version of what a read transaction saw.
func readVersion(tx *bolt.Tx) version { return version{uint64(tx.ID()), math.MaxUint64} }

// recordCacheGen bounds the cache to two generations of this many entries:
// about the records of the orders in flight, a few MiB at most.
const recordCacheGen = 512

func (c *recordCache) get(k cacheKey) (any, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.cur[k]
	if !ok {
		if e, ok = c.prev[k]; ok {
			c.putLocked(k, e)
		}
	}
	return e.v, ok && e.v != nil
}

// del records that the write at version ver deleted the record: the
// entry becomes a tombstone (no value) at ver, so that a read which began
// before the delete committed cannot cache the deleted record again, and
// get misses, sending the caller to the database.
func (c *recordCache) del(k cacheKey, ver version) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.putLocked(k, cacheEntry{ver: ver})
}

// put caches v (which the caller no longer changes) at version ver unless
// the cache holds a newer version of the record or may have evicted one.
func (c *recordCache) put(k cacheKey, ver version, v any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ver.less(c.floor) {
		// Too old to cache (a newer state may have been evicted), but it
		// is newer than any entry of k older than itself: drop those, or
		// they would be served instead of what this write committed.
		for _, m := range []map[cacheKey]cacheEntry{c.cur, c.prev} {
			if e, ok := m[k]; ok && e.ver.less(ver) {
				delete(m, k)
			}
		}
		return
	}
	if e, ok := c.cur[k]; ok && ver.less(e.ver) {
		return
	}
	if e, ok := c.prev[k]; ok && ver.less(e.ver) {
		return
	}
	c.putLocked(k, cacheEntry{ver, v})
}

func (c *recordCache) putLocked(k cacheKey, e cacheEntry) {
	if c.cur == nil || len(c.cur) >= recordCacheGen {
		for _, old := range c.prev {
			if c.floor.less(old.ver) {
				c.floor = old.ver
			}
		}
		c.prev, c.cur = c.cur, make(map[cacheKey]cacheEntry, recordCacheGen)
	}
	delete(c.prev, k)
	c.cur[k] = e
}

// cache returns the record cache of s's database.
func (s *Store) cache() *recordCache { return &s.committer().cache }

// batchCache is batch for a write of records the cache keeps: once the
// write has committed, each of puts becomes the cached value of its key.
func (s *Store) batchCache(fn func(tx *bolt.Tx) error, puts ...cachePut) error {
	g := s.committer()
	var ver version
	err := g.do(func(tx *bolt.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		ver = version{uint64(tx.ID()), g.cache.seq.Add(1)}
		return nil
	})
	if err == nil {
		for _, p := range puts {
			g.cache.put(p.k, ver, p.v)
		}
	}
	return err
}

type cachePut struct {
	k cacheKey
	v any
}

func orderPut(o *acme.Order) cachePut { return cachePut{cacheKey{'o', o.ID}, cloneOrder(o)} }
func authzPut(a *acme.Authz) cachePut { return cachePut{cacheKey{'z', a.ID}, cloneAuthz(a)} }
func certPut(c *acme.Cert) cachePut   { return cachePut{cacheKey{'c', c.Serial}, cloneCert(c)} }

// The clones copy what the JSON encoding keeps (exported fields), deeply,
// so that a cached record is exactly what decoding it would give and
// shares nothing with the caller's copy.

func cloneProblem(p *acme.Problem) *acme.Problem {
	if p == nil {
		return nil
	}
	q := &acme.Problem{Type: p.Type, Detail: p.Detail, Status: p.Status, Algorithms: cloneSlice(p.Algorithms)}
	if p.Identifier != nil {
		id := *p.Identifier
		q.Identifier = &id
	}
	if p.Subproblems != nil {
		q.Subproblems = make([]*acme.Problem, len(p.Subproblems))
		for i, s := range p.Subproblems {
			q.Subproblems[i] = cloneProblem(s)
		}
	}
	return q
}

func cloneOrder(o *acme.Order) *acme.Order {
	c := *o
	c.Identifiers = cloneSlice(o.Identifiers)
	c.Authzs = cloneSlice(o.Authzs)
	c.CSR = cloneSlice(o.CSR)
	c.Error = cloneProblem(o.Error)
	return &c
}

func cloneAuthz(a *acme.Authz) *acme.Authz {
	c := *a
	if a.Challenges != nil {
		c.Challenges = make([]*acme.Challenge, len(a.Challenges))
		for i, ch := range a.Challenges {
			if ch == nil {
				continue
			}
			cc := *ch
			cc.Error = cloneProblem(ch.Error)
			c.Challenges[i] = &cc
		}
	}
	return &c
}

func cloneCert(c *acme.Cert) *acme.Cert {
	d := *c
	d.DER = cloneSlice(c.DER)
	if c.Chain != nil {
		d.Chain = make([][]byte, len(c.Chain))
		for i, b := range c.Chain {
			d.Chain[i] = cloneSlice(b)
		}
	}
	return &d
}

// cloneSlice copies s, keeping nil apart from empty.
func cloneSlice[S ~[]E, E any](s S) S {
	if s == nil {
		return nil
	}
	return append(make(S, 0, len(s)), s...)
}
