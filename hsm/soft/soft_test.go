package soft

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hsmca/hsmca/hsm"
	bolt "go.etcd.io/bbolt"
)

type clock struct {
	mu  sync.RWMutex // read-locked by every audited signature (benchmarks)
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.RLock(); defer c.mu.RUnlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

type fixture struct {
	dir   string
	clock *clock
	m     *Module
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{dir: filepath.Join(t.TempDir(), "module"), clock: &clock{now: time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)}}
	f.open(t)
	t.Cleanup(func() { f.m.Close() })
	return f
}

func (f *fixture) open(t testing.TB) {
	t.Helper()
	m, err := Open(f.dir, Options{Clock: f.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	f.m = m
}

func (f *fixture) reopen(t testing.TB) {
	t.Helper()
	if err := f.m.Close(); err != nil {
		t.Fatal(err)
	}
	f.open(t)
}

func (f *fixture) init(t testing.TB, name string, n, m int, policy hsm.Policy) []hsm.Share {
	t.Helper()
	shares, err := f.m.InitPartition(hsm.InitOptions{Partition: name, Shares: n, Threshold: m, Policy: policy})
	if err != nil {
		t.Fatal(err)
	}
	if len(shares) != n {
		t.Fatalf("got %d shares, want %d", len(shares), n)
	}
	return shares
}

func (f *fixture) part(t testing.TB, name string) hsm.Partition {
	t.Helper()
	p, err := f.m.Partition(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func activate(t testing.TB, p hsm.Partition, shares []hsm.Share) {
	t.Helper()
	var st hsm.PartitionStatus
	var err error
	for _, s := range shares {
		if st, err = p.AddShare(s); err != nil {
			t.Fatalf("share %d: %v", s.Index, err)
		}
	}
	if st.State != hsm.StateActive {
		t.Fatalf("after %d shares: %+v", len(shares), st)
	}
}

func signVerify(t testing.TB, s crypto.Signer) error {
	t.Helper()
	msg := []byte("hsmca test message")
	digest := sha256.Sum256(msg)
	switch pub := s.Public().(type) {
	case ed25519.PublicKey:
		sig, err := s.Sign(rand.Reader, msg, crypto.Hash(0))
		if err != nil {
			return err
		}
		if !ed25519.Verify(pub, msg, sig) {
			t.Fatal("ed25519 signature does not verify")
		}
	case *ecdsa.PublicKey:
		sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA256)
		if err != nil {
			return err
		}
		if !ecdsa.VerifyASN1(pub, digest[:], sig) {
			t.Fatal("ecdsa signature does not verify")
		}
	case *rsa.PublicKey:
		sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA256)
		if err != nil {
			return err
		}
		if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("unexpected public key %T", pub)
	}
	return nil
}

func TestQuorumActivates(t *testing.T) {
	tests := []struct{ n, m int }{{1, 1}, {3, 2}, {5, 3}}
	for _, tc := range tests {
		t.Run("", func(t *testing.T) {
			f := newFixture(t)
			shares := f.init(t, "issuing", tc.n, tc.m, hsm.PolicyOnline)
			p := f.part(t, "issuing")
			// Keys exist only once active, so generate one in a first
			// activation and check the quorum in a second.
			activate(t, p, shares[:tc.m])
			if _, err := p.GenerateKey(hsm.ECDSAP256, "k", false); err != nil {
				t.Fatal(err)
			}
			if err := p.Seal(); err != nil {
				t.Fatal(err)
			}
			s, err := p.Signer("k")
			if err != nil {
				t.Fatal(err)
			}
			// Use the last shares this time; M-1 of them do not activate.
			use := shares[tc.n-tc.m:]
			for i, sh := range use[:tc.m-1] {
				st, err := p.AddShare(sh)
				if err != nil {
					t.Fatal(err)
				}
				if st.State != hsm.StateCollecting || st.Presented != i+1 || st.Threshold != tc.m {
					t.Fatalf("after %d shares: %+v", i+1, st)
				}
				if err := signVerify(t, s); !errors.Is(err, hsm.ErrSealed) {
					t.Fatalf("sign with %d of %d shares: %v", i+1, tc.m, err)
				}
			}
			st, err := p.AddShare(use[tc.m-1])
			if err != nil || st.State != hsm.StateActive {
				t.Fatalf("M-th share: %+v, %v", st, err)
			}
			if err := signVerify(t, s); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestSharesRejectedNamingTheShare(t *testing.T) {
	f := newFixture(t)
	shares := f.init(t, "issuing", 5, 3, hsm.PolicyOnline)
	rootShares := f.init(t, "root", 3, 3, hsm.PolicyPerOperation)
	other := newFixture(t)
	otherShares := other.init(t, "issuing", 5, 3, hsm.PolicyOnline)

	changed := shares[3]
	changed.Value = bytes.Clone(changed.Value)
	changed.Value[7] ^= 0x10

	tests := []struct {
		name      string
		share     hsm.Share
		index     int
		wrong     bool
		duplicate bool
	}{
		{"another module", otherShares[1], 2, true, false},
		{"another partition", rootShares[2], 3, true, false},
		{"changed value", changed, 4, false, false},
		{"duplicate", shares[0], 1, false, true},
	}
	p := f.part(t, "issuing")
	if _, err := p.AddShare(shares[0]); err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, err := p.AddShare(tc.share)
			if tc.duplicate {
				if !errors.Is(err, hsm.ErrDuplicateShare) {
					t.Fatalf("got %v, want ErrDuplicateShare", err)
				}
			} else {
				var serr *hsm.ShareError
				if !errors.As(err, &serr) || serr.Index != tc.index || serr.WrongModule != tc.wrong {
					t.Fatalf("got %#v, want a ShareError for share %d", err, tc.index)
				}
				if !strings.Contains(err.Error(), "share "+string(rune('0'+tc.index))) {
					t.Fatalf("message %q does not name the share", err)
				}
			}
			if st.State != hsm.StateCollecting || st.Presented != 1 {
				t.Fatalf("status after refusal: %+v", st)
			}
		})
	}
	// A share with one changed character never reaches the partition.
	text := hsm.EncodeText(shares[2])
	i := strings.Index(text, "value: ") + 9
	typo := text[:i] + map[bool]string{true: "B", false: "A"}[text[i] == 'A'] + text[i+1:]
	_, err := hsm.DecodeText(typo)
	var serr *hsm.ShareError
	if !errors.As(err, &serr) || serr.Index != 3 {
		t.Fatalf("typo: %v", err)
	}
	// The good shares still activate.
	activate(t, p, shares[1:3])
}

func TestLockoutSurvivesRestart(t *testing.T) {
	f := newFixture(t)
	shares := f.init(t, "issuing", 3, 2, hsm.PolicyOnline)
	p := f.part(t, "issuing")
	bad := shares[0]
	bad.Value = bytes.Clone(bad.Value)
	bad.Value[0] ^= 1
	for i := 1; i <= 5; i++ {
		_, err := p.AddShare(bad)
		var serr *hsm.ShareError
		if !errors.As(err, &serr) {
			t.Fatalf("bad share %d: %v", i, err)
		}
	}
	_, err := p.AddShare(shares[1])
	var lerr *hsm.LockedError
	if !errors.As(err, &lerr) || !strings.Contains(err.Error(), "locked until") {
		t.Fatalf("6th share: %v", err)
	}
	f.reopen(t)
	p = f.part(t, "issuing")
	st, err := p.Status()
	if err != nil || st.LockedUntil.IsZero() || st.FailedShares != 5 {
		t.Fatalf("status after restart: %+v, %v", st, err)
	}
	if _, err := p.AddShare(shares[1]); !errors.As(err, &lerr) {
		t.Fatalf("after restart: %v", err)
	}
	f.clock.Add(15 * time.Minute)
	activate(t, p, shares[1:])
	evs, err := f.m.Audit().Events(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	var lockouts, rejected int
	for _, e := range evs {
		switch e.Type {
		case "lockout":
			lockouts++
		case "share-rejected":
			rejected++
		}
	}
	if lockouts != 1 || rejected != 5 {
		t.Fatalf("audit: %d lockouts, %d rejected shares", lockouts, rejected)
	}
}

func TestPerOperationReseals(t *testing.T) {
	f := newFixture(t)
	shares := f.init(t, "root", 3, 2, hsm.PolicyPerOperation)
	p := f.part(t, "root")
	activate(t, p, shares[:2])
	if _, err := p.GenerateKey(hsm.ECDSAP384, "root-key", false); err != nil {
		t.Fatal(err)
	}
	s, err := p.Signer("root-key")
	if err != nil {
		t.Fatal(err)
	}
	// The default allowance is one signature.
	if err := signVerify(t, s); err != nil {
		t.Fatal(err)
	}
	if st, _ := p.Status(); st.State != hsm.StateSealed {
		t.Fatalf("after the operation's signature: %+v", st)
	}
	if err := signVerify(t, s); !errors.Is(err, hsm.ErrSealed) {
		t.Fatalf("second signature: %v", err)
	}
	// A ceremony step asks for three.
	if err := p.SetOperationSignatures(3); err != nil {
		t.Fatal(err)
	}
	activate(t, p, shares[1:])
	if st, _ := p.Status(); st.SignaturesLeft != 3 {
		t.Fatalf("status: %+v", st)
	}
	for i := range 3 {
		if err := signVerify(t, s); err != nil {
			t.Fatalf("signature %d: %v", i+1, err)
		}
	}
	if err := signVerify(t, s); !errors.Is(err, hsm.ErrSealed) {
		t.Fatalf("fourth signature: %v", err)
	}
	// The allowance is per activation: the next one is back to one.
	activate(t, p, shares[:2])
	if st, _ := p.Status(); st.SignaturesLeft != 1 {
		t.Fatalf("next activation: %+v", st)
	}
	online := f.init(t, "issuing", 1, 1, hsm.PolicyOnline)
	_ = online
	if err := f.part(t, "issuing").SetOperationSignatures(2); err == nil {
		t.Fatal("SetOperationSignatures accepted on an online partition")
	}
}

func TestPerOperationConcurrentSignersGetOneSignature(t *testing.T) {
	f := newFixture(t)
	shares := f.init(t, "root", 1, 1, hsm.PolicyPerOperation)
	p := f.part(t, "root")
	activate(t, p, shares)
	if _, err := p.GenerateKey(hsm.ECDSAP256, "k", false); err != nil {
		t.Fatal(err)
	}
	s, _ := p.Signer("k")
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := sha256.Sum256([]byte("x"))
			if _, err := s.Sign(rand.Reader, d[:], crypto.SHA256); err == nil {
				mu.Lock()
				ok++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if ok != 1 {
		t.Fatalf("%d signatures made, the operation allowed 1", ok)
	}
}

func TestReshare(t *testing.T) {
	f := newFixture(t)
	shares := f.init(t, "issuing", 3, 2, hsm.PolicyOnline)
	p := f.part(t, "issuing")
	if _, err := p.Reshare(5, 3); !errors.Is(err, hsm.ErrSealed) {
		t.Fatalf("reshare while sealed: %v", err)
	}
	activate(t, p, shares[:2])
	k, err := p.GenerateKey(hsm.RSA2048, "rsa", false)
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := p.Reshare(5, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(fresh) != 5 || fresh[0].Generation != 2 || fresh[0].Threshold != 3 {
		t.Fatalf("new shares: %+v", fresh[0])
	}
	f.reopen(t)
	p = f.part(t, "issuing")
	_, err = p.AddShare(shares[0])
	var serr *hsm.ShareError
	if !errors.As(err, &serr) || !serr.WrongModule || serr.Index != 1 {
		t.Fatalf("old share after reshare: %v", err)
	}
	activate(t, p, fresh[2:])
	s, err := p.Signer(k.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := signVerify(t, s); err != nil {
		t.Fatalf("key after reshare: %v", err)
	}
}

func TestRestartSealsAndModuleInUse(t *testing.T) {
	f := newFixture(t)
	shares := f.init(t, "issuing", 1, 1, hsm.PolicyOnline)
	activate(t, f.part(t, "issuing"), shares)
	_, err := Open(f.dir, Options{})
	if !errors.Is(err, hsm.ErrModuleInUse) {
		t.Fatalf("second open: %v", err)
	}
	id := f.m.ID()
	f.reopen(t)
	if f.m.ID() != id {
		t.Fatal("module ID changed on reopen")
	}
	st, err := f.part(t, "issuing").Status()
	if err != nil || st.State != hsm.StateSealed {
		t.Fatalf("after restart: %+v, %v", st, err)
	}
	if !Exists(f.dir) || Exists(t.TempDir()) {
		t.Fatal("Exists is wrong")
	}
}

func TestPartitionsAndErrors(t *testing.T) {
	f := newFixture(t)
	f.init(t, "root", 1, 1, hsm.PolicyPerOperation)
	shares := f.init(t, "issuing", 1, 1, hsm.PolicyOnline)
	names, err := f.m.Partitions()
	if err != nil || strings.Join(names, ",") != "root,issuing" {
		t.Fatalf("partitions: %v, %v", names, err)
	}
	if _, err := f.m.InitPartition(hsm.InitOptions{Partition: "root", Shares: 1, Threshold: 1}); !errors.Is(err, hsm.ErrPartitionExists) {
		t.Fatalf("init twice: %v", err)
	}
	for _, bad := range []hsm.InitOptions{
		{Partition: "Bad Name", Shares: 1, Threshold: 1},
		{Partition: "x", Shares: 2, Threshold: 3},
		{Partition: "x", Shares: 0, Threshold: 0},
		{Partition: "x", Shares: 1, Threshold: 1, Policy: "sometimes"},
	} {
		if _, err := f.m.InitPartition(bad); err == nil {
			t.Fatalf("InitPartition(%+v) accepted", bad)
		}
	}
	if _, err := f.m.Partition("nope"); !errors.Is(err, hsm.ErrNoPartition) {
		t.Fatalf("missing partition: %v", err)
	}
	p := f.part(t, "issuing")
	if _, err := p.GenerateKey(hsm.ECDSAP256, "k", false); !errors.Is(err, hsm.ErrSealed) {
		t.Fatalf("generate while sealed: %v", err)
	}
	activate(t, p, shares)
	k, err := p.GenerateKey(hsm.ECDSAP256, "k", false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.GenerateKey(hsm.Ed25519, "k", false); !errors.Is(err, hsm.ErrKeyExists) {
		t.Fatalf("duplicate label: %v", err)
	}
	if _, err := p.Key("missing"); !errors.Is(err, hsm.ErrKeyNotFound) {
		t.Fatalf("missing key: %v", err)
	}
	s, err := p.Signer("k")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Seal(); err != nil {
		t.Fatal(err)
	}
	if s.Public() == nil {
		t.Fatal("Public is nil while sealed")
	}
	if err := signVerify(t, s); !errors.Is(err, hsm.ErrSealed) {
		t.Fatalf("sign after seal: %v", err)
	}
	activate(t, p, shares)
	if err := p.DestroyKey(k.ID); err != nil {
		t.Fatal(err)
	}
	if err := signVerify(t, s); !errors.Is(err, hsm.ErrKeyNotFound) {
		t.Fatalf("sign with destroyed key: %v", err)
	}
	keys, err := p.Keys()
	if err != nil || len(keys) != 0 {
		t.Fatalf("keys after destroy: %v, %v", keys, err)
	}
}

func TestAuditTrailAndTamper(t *testing.T) {
	f := newFixture(t)
	shares := f.init(t, "issuing", 2, 2, hsm.PolicyOnline)
	p := f.part(t, "issuing")
	activate(t, p, shares)
	k, err := p.GenerateKey(hsm.ECDSAP256, "k", false)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := p.Signer("k")
	digest := sha256.Sum256([]byte("m"))
	if _, err := s.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
		t.Fatal(err)
	}
	p.Seal()
	evs, err := f.m.Audit().Events(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, e := range evs {
		types = append(types, e.Type)
		if e.Type == "sign" && (e.Fields["key"] != k.ID || e.Fields["digest"] == "") {
			t.Fatalf("sign record: %+v", e)
		}
	}
	want := "init,init,share-accepted,share-accepted,activate,key-generate,sign,seal"
	if got := strings.Join(types, ","); got != want {
		t.Fatalf("audit types %s, want %s", got, want)
	}
	if h, err := f.m.Audit().Verify(); err != nil || h.Count != uint64(len(evs)) {
		t.Fatalf("verify: %+v, %v", h, err)
	}
	// Change records in the files: verify names the first one changed.
	f.m.Close()
	tamperSignRecord(t, f.dir) // record 7, in the segment
	f.open(t)
	_, err = f.m.Audit().Verify()
	var aerr *hsm.AuditError
	if !errors.As(err, &aerr) || aerr.Seq != 7 || !strings.Contains(aerr.Reason, "altered") {
		t.Fatalf("verify after changing the sign record: %v", err)
	}
	f.m.Close()
	db, err := bolt.Open(filepath.Join(f.dir, FileName), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("audit"))
		k := []byte{0, 0, 0, 0, 0, 0, 0, 6} // key-generate, in the database
		return b.Put(k, bytes.Replace(b.Get(k), []byte(`"key-generate"`), []byte(`"key-destroy"`), 1))
	})
	db.Close()
	f.open(t)
	if _, err = f.m.Audit().Verify(); !errors.As(err, &aerr) || aerr.Seq != 6 {
		t.Fatalf("verify after changing a database record: %v", err)
	}
}

// tamperSignRecord flips a digest bit of the first signature record in the
// module's audit segment and fixes the frame's CRC (the frame layout is
// documented in hsm/audit), so that only the hash chain can tell.
func tamperSignRecord(t *testing.T, dir string) {
	t.Helper()
	path := filepath.Join(dir, AuditFileName)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const off = 1024 // the first frame, after the header and the head slots
	n := int(binary.BigEndian.Uint32(data[off:]))
	body := data[off+8 : off+8+n]
	body[len(body)-1] ^= 1 // the digest is the body's last field
	binary.BigEndian.PutUint32(data[off+4:], crc32.Checksum(body, crc32.MakeTable(crc32.Castagnoli)))
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestSealDuringConcurrentSigning(t *testing.T) {
	f := newFixture(t)
	shares := f.init(t, "issuing", 1, 1, hsm.PolicyOnline)
	p := f.part(t, "issuing")
	activate(t, p, shares)
	if _, err := p.GenerateKey(hsm.ECDSAP256, "k", false); err != nil {
		t.Fatal(err)
	}
	s, _ := p.Signer("k")
	d := sha256.Sum256([]byte("x"))
	var wg sync.WaitGroup
	errs := make(chan error, 8*50)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				if _, err := s.Sign(rand.Reader, d[:], crypto.SHA256); err != nil {
					errs <- err
				}
			}
		}()
	}
	if err := p.Seal(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, hsm.ErrSealed) {
			t.Fatalf("signing while sealing: %v", err)
		}
	}
	if _, err := s.Sign(rand.Reader, d[:], crypto.SHA256); !errors.Is(err, hsm.ErrSealed) {
		t.Fatalf("after seal: %v", err)
	}
	// Every signature that was returned has its record.
	if h, err := f.m.Audit().Verify(); err != nil || h.Count == 0 {
		t.Fatalf("verify: %+v, %v", h, err)
	}
}

func TestCollectingWindowExpires(t *testing.T) {
	f := newFixture(t)
	shares := f.init(t, "issuing", 3, 2, hsm.PolicyOnline)
	p := f.part(t, "issuing")
	st, err := p.AddShare(shares[0])
	if err != nil || st.State != hsm.StateCollecting || !st.CollectingUntil.Equal(f.clock.Now().Add(15*time.Minute)) {
		t.Fatalf("first share: %+v, %v", st, err)
	}
	f.clock.Add(15 * time.Minute)
	if st, _ := p.Status(); st.State != hsm.StateSealed || st.Presented != 0 {
		t.Fatalf("after the window: %+v", st)
	}
	if st, err := p.AddShare(shares[1]); err != nil || st.State != hsm.StateCollecting {
		t.Fatalf("share after the window: %+v, %v", st, err)
	}
}

func TestTruncatedAuditLogRefusesShares(t *testing.T) {
	f := newFixture(t)
	shares := f.init(t, "issuing", 1, 1, hsm.PolicyOnline)
	f.m.Close()
	db, err := bolt.Open(filepath.Join(f.dir, FileName), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("audit"))
		k, _ := b.Cursor().Last()
		return b.Delete(k)
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	f.open(t)
	_, err = f.part(t, "issuing").AddShare(shares[0])
	var aerr *hsm.AuditError
	if !errors.As(err, &aerr) {
		t.Fatalf("share on a module with a truncated audit log: %v", err)
	}
	if _, err := f.m.Audit().Verify(); !errors.As(err, &aerr) {
		t.Fatalf("verify: %v", err)
	}
}

// A per-operation partition whose last signature has been taken (the
// state between that signature and its reseal) refuses every other
// operation too, not only further signatures.
func TestPerOperationSpentRefusesOtherOperations(t *testing.T) {
	f := newFixture(t)
	shares := f.init(t, "root", 1, 1, hsm.PolicyPerOperation)
	p := f.part(t, "root")
	activate(t, p, shares)
	sp := p.(*Partition)
	sp.mu.Lock()
	if !sp.active || sp.left != 1 {
		sp.mu.Unlock()
		t.Fatalf("activated per-operation partition: active %v, left %d", sp.active, sp.left)
	}
	sp.left = 0 // the last signature was taken; its reseal has not run yet
	sp.mu.Unlock()
	if _, err := p.GenerateKey(hsm.ECDSAP256, "late", false); !errors.Is(err, hsm.ErrSealed) {
		t.Fatalf("GenerateKey after the last signature: %v, want ErrSealed", err)
	}
	if _, err := p.Reshare(1, 1); !errors.Is(err, hsm.ErrSealed) {
		t.Fatalf("Reshare after the last signature: %v, want ErrSealed", err)
	}
}
