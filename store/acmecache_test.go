package store

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hsmca/hsmca/acme"
	bolt "go.etcd.io/bbolt"
)

func fullProblem() *acme.Problem {
	return &acme.Problem{Type: "urn:ietf:params:acme:error:connection", Detail: "d", Status: 400,
		Identifier: &acme.Identifier{Type: "dns", Value: "a.test"}, Algorithms: []string{"ES256"},
		Subproblems: []*acme.Problem{{Type: "t", Detail: "s", Status: 403,
			Identifier: &acme.Identifier{Type: "ip", Value: "192.0.2.1"}, Algorithms: []string{"EdDSA"}}}}
}

// The clones must equal what a JSON round trip (the store's encoding)
// gives, and share nothing with the original. Every exported field is set,
// so a field added to these types and not to the clones fails here.
func TestRecordCacheClones(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	o := &acme.Order{ID: "o1", AccountID: "a1", Status: "pending", Expires: now,
		Identifiers: []acme.Identifier{{Type: "dns", Value: "a.test"}}, NotBefore: now, NotAfter: now.Add(time.Hour),
		Profile: "p", Replaces: "r", Authzs: []string{"z1", "z2"}, CSR: []byte{1, 2}, CertSerial: "ab",
		Error: fullProblem(), Created: now}
	z := &acme.Authz{ID: "z1", AccountID: "a1", Identifier: acme.Identifier{Type: "dns", Value: "a.test"},
		Wildcard: true, Status: "valid", Expires: now, Token: "tok",
		Challenges: []*acme.Challenge{{Type: "http-01", Status: "invalid", Validated: now, Error: fullProblem(), Attempts: 2}}}
	c := &acme.Cert{Serial: "ab", CASerial: "00ab", AccountID: "a1", OrderID: "o1", DER: []byte{3},
		Chain: [][]byte{{4}, {5}}, NotBefore: now, NotAfter: now, Revoked: true, Replaced: true, ReplacedBy: "o2"}

	for _, tc := range []struct {
		name  string
		orig  any
		clone func() any
		fresh func() any
	}{
		{"order", o, func() any { return cloneOrder(o) }, func() any { return new(acme.Order) }},
		{"authz", z, func() any { return cloneAuthz(z) }, func() any { return new(acme.Authz) }},
		{"cert", c, func() any { return cloneCert(c) }, func() any { return new(acme.Cert) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			allSet(t, reflect.ValueOf(tc.orig).Elem(), tc.name)
			b, err := json.Marshal(tc.orig)
			if err != nil {
				t.Fatal(err)
			}
			want := tc.fresh()
			if err := json.Unmarshal(b, want); err != nil {
				t.Fatal(err)
			}
			got := tc.clone()
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("clone\n%+v\nJSON round trip\n%+v", got, want)
			}
			// Change everything the clone reaches; the original must not move.
			before, _ := json.Marshal(tc.orig)
			scribble(reflect.ValueOf(got).Elem())
			if after, _ := json.Marshal(tc.orig); string(after) != string(before) {
				t.Fatalf("changing the clone changed the original:\n%s\n%s", before, after)
			}
		})
	}
}

// allSet fails if an exported field of v (recursively) is zero.
func allSet(t *testing.T, v reflect.Value, path string) {
	t.Helper()
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			t.Fatalf("%s is nil: fill it in the test", path)
		}
		allSet(t, v.Elem(), path)
	case reflect.Struct:
		if v.Type() == reflect.TypeOf(time.Time{}) {
			if v.Interface().(time.Time).IsZero() {
				t.Fatalf("%s is zero: fill it in the test", path)
			}
			return
		}
		for i := 0; i < v.NumField(); i++ {
			if f := v.Type().Field(i); f.IsExported() {
				allSet(t, v.Field(i), path+"."+f.Name)
			}
		}
	case reflect.Slice:
		if strings.HasSuffix(path, ".Subproblems.Subproblems") {
			return // problems nest one level in ACME
		}
		if v.Len() == 0 {
			t.Fatalf("%s is empty: fill it in the test", path)
		}
		for i := 0; i < v.Len(); i++ {
			allSet(t, v.Index(i), path)
		}
	default:
		if v.IsZero() {
			t.Fatalf("%s is zero: fill it in the test", path)
		}
	}
}

// scribble changes every settable scalar and slice element v reaches.
func scribble(v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			scribble(v.Elem())
		}
	case reflect.Struct:
		if v.Type() == reflect.TypeOf(time.Time{}) {
			v.Set(reflect.ValueOf(time.Unix(1, 0)))
			return
		}
		for i := 0; i < v.NumField(); i++ {
			if v.Type().Field(i).IsExported() {
				scribble(v.Field(i))
			}
		}
	case reflect.Slice:
		for i := 0; i < v.Len(); i++ {
			scribble(v.Index(i))
		}
	case reflect.String:
		v.SetString(v.String() + "!")
	case reflect.Int, reflect.Int64:
		v.SetInt(v.Int() + 1)
	case reflect.Uint8:
		v.SetUint(v.Uint() + 1)
	case reflect.Bool:
		v.SetBool(!v.Bool())
	}
}

func TestRecordCacheVersions(t *testing.T) {
	var c recordCache
	k := cacheKey{'z', "z1"}
	c.put(k, version{6, 1}, "write at 6")
	c.put(k, version{5, math.MaxUint64}, "read of snapshot 5")
	if v, _ := c.get(k); v != "write at 6" {
		t.Fatalf("an older read replaced a write: %v", v)
	}
	c.put(k, version{6, math.MaxUint64}, "read of snapshot 6")
	c.put(k, version{6, 0}, "earlier write of transaction 6")
	if v, _ := c.get(k); v != "read of snapshot 6" {
		t.Fatalf("got %v", v)
	}
	c.put(k, version{7, 1}, "write at 7")
	if v, _ := c.get(k); v != "write at 7" {
		t.Fatalf("a newer write was not cached: %v", v)
	}
	// Evict k (two generations of other keys), then offer a read older
	// than the write that was evicted: it must not be cached.
	for i := 0; i < 2*recordCacheGen+1; i++ {
		c.put(cacheKey{'o', string(rune(i))}, version{8, uint64(i)}, i)
	}
	if _, ok := c.get(k); ok {
		t.Fatal("not evicted")
	}
	c.put(k, version{6, math.MaxUint64}, "stale read")
	if v, ok := c.get(k); ok {
		t.Fatalf("a read older than an evicted write was cached: %v", v)
	}
	if len(c.cur)+len(c.prev) > 2*recordCacheGen {
		t.Fatalf("cache holds %d entries", len(c.cur)+len(c.prev))
	}
}

// Readers racing one writer per record (as the ACME server's locks make
// it) never see a record go back to an older state, and what the cache
// serves equals what the database holds after a reopen.
func TestRecordCacheRace(t *testing.T) {
	p := filepath.Join(t.TempDir(), "s.db")
	s, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const n, writes = 4, 40
	for i := 0; i < n; i++ {
		a := &acme.Authz{ID: string(rune('a' + i)), AccountID: "x", Status: "pending",
			Challenges: []*acme.Challenge{{Type: "http-01", Status: "pending"}}}
		if err := s.CreateOrder(ctx, &acme.Order{ID: "o" + a.ID, AccountID: "x", Authzs: []string{a.ID}}, []*acme.Authz{a}); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		id := string(rune('a' + i))
		wg.Add(2)
		go func() { // the writer of id
			defer wg.Done()
			for w := 1; w <= writes; w++ {
				a, err := s.GetAuthz(ctx, id)
				if err != nil {
					t.Error(err)
					return
				}
				a.Challenges[0].Attempts = w
				if err := s.UpdateAuthz(ctx, a, "", false); err != nil {
					t.Error(err)
					return
				}
			}
		}()
		go func() { // a reader of id
			defer wg.Done()
			last := 0
			for r := 0; r < 4*writes; r++ {
				a, err := s.GetAuthz(ctx, id)
				if err != nil {
					t.Error(err)
					return
				}
				got := a.Challenges[0].Attempts
				if got < last {
					t.Errorf("%s went back from %d to %d", id, last, got)
					return
				}
				last = got
				a.Challenges[0].Attempts = -1 // the caller's copy only
			}
		}()
	}
	wg.Wait()
	cached := make([]*acme.Authz, n)
	for i := range cached {
		if cached[i], err = s.GetAuthz(ctx, string(rune('a'+i))); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	if s, err = Open(p); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i, c := range cached {
		d, err := s.GetAuthz(ctx, string(rune('a'+i)))
		if err != nil {
			t.Fatal(err)
		}
		if c.Challenges[0].Attempts != writes || !reflect.DeepEqual(c, d) {
			t.Fatalf("cached %+v, on disk %+v", c.Challenges[0], d.Challenges[0])
		}
	}
}

// A write whose cache put comes late, after a whole generation of other
// puts raised the floor past it, is not cached; the entry of the record it
// replaced must not survive either, or reads would keep getting the state
// before the write.
func TestRecordCacheLatePutDropsOlderEntry(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	o := &acme.Order{ID: "late", AccountID: "a", Status: acme.StatusPending}
	if err := s.CreateOrder(ctx, o, nil); err != nil {
		t.Fatal(err)
	}
	// The first half of an update: its commit, whose put is held back.
	g := s.committer()
	next := cloneOrder(o)
	next.Status = acme.StatusProcessing
	var ver version
	if err := g.do(func(tx *bolt.Tx) error {
		ver = version{uint64(tx.ID()), g.cache.seq.Add(1)}
		return putJSON(tx, bOrder, next.ID, next)
	}); err != nil {
		t.Fatal(err)
	}
	// Meanwhile other orders fill more than a generation of the cache,
	// with a read of this one among them (which keeps its old entry).
	for i := range recordCacheGen {
		if err := s.CreateOrder(ctx, &acme.Order{ID: fmt.Sprint("x", i), AccountID: "b"}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.GetOrder(ctx, "late"); err != nil {
		t.Fatal(err)
	}
	for i := range recordCacheGen + 1 {
		if err := s.CreateOrder(ctx, &acme.Order{ID: fmt.Sprint("y", i), AccountID: "b"}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if !ver.less(g.cache.floor) {
		t.Fatalf("setup: the floor %v did not pass the write %v", g.cache.floor, ver)
	}
	p := orderPut(next)
	g.cache.put(p.k, ver, p.v) // the second half of the update
	got, err := s.GetOrder(ctx, "late")
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != acme.StatusProcessing {
		t.Fatalf("read %q after a committed update to %q", got.Status, acme.StatusProcessing)
	}
}
