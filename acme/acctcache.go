package acme

import (
	"context"
	"sync"

	jose "github.com/go-jose/go-jose/v4"
)

// accountCache keeps the accounts that sign requests, decoded and with
// their parsed keys, so that authenticating a request (RFC 8555 §6.2) does
// not read and decode the account from the store each time. The signature
// is still verified on every request; only the lookup is saved.
//
// The cache never serves an account older than the last write this server
// made: every account write goes through write, which drops the entry and
// moves a generation counter once the store has the new state, and a
// reader caches what it read only if no write finished since it looked the
// entry up. Account writes happen only in this server (the store is one
// process's), so the cache needs no other invalidation.
type accountCache struct {
	mu  sync.Mutex
	gen uint64
	m   map[string]*cachedAccount
}

type cachedAccount struct {
	acct Account
	key  *jose.JSONWebKey
}

// accountCacheMax bounds the cache; when full it starts over.
const accountCacheMax = 8192

// get returns a copy of the account and its parsed key; the copy is the
// caller's to change.
func (c *accountCache) get(ctx context.Context, st Store, keys *keyCache, id string) (*Account, *jose.JSONWebKey, error) {
	c.mu.Lock()
	e, ok := c.m[id]
	gen := c.gen
	c.mu.Unlock()
	if ok {
		return e.acct.clone(), e.key, nil
	}
	a, err := st.GetAccount(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	key, err := keys.get(a.Key)
	if err != nil {
		return nil, nil, err
	}
	c.mu.Lock()
	if c.gen == gen {
		if c.m == nil || len(c.m) >= accountCacheMax {
			c.m = make(map[string]*cachedAccount)
		}
		c.m[id] = &cachedAccount{acct: *a.clone(), key: key}
	}
	c.mu.Unlock()
	return a, key, nil
}

// write runs fn, a store write of account id, and makes the cache forget
// the account once the write has ended (whether or not it succeeded).
func (c *accountCache) write(id string, fn func() error) error {
	err := fn()
	c.mu.Lock()
	c.gen++
	delete(c.m, id)
	c.mu.Unlock()
	return err
}

// clone copies the account; Key is shared, as nothing changes its bytes
// in place (a key change assigns a new slice).
func (a *Account) clone() *Account {
	b := *a
	if a.Contact != nil {
		b.Contact = append([]string(nil), a.Contact...)
	}
	return &b
}
