//go:build cgo

package pkcs11

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsmca/hsmca/hsm"
)

func TestLifecycle(t *testing.T) {
	needSoftHSM(t)
	mod, shares, dir := initModule(t, tokLifecycle, hsm.InitOptions{Partition: "issuing", Shares: 5, Threshold: 3}, Options{})
	defer func() { mod.Close() }()
	if len(shares) != 5 || mod.Backend() != "pkcs11" {
		t.Fatalf("got %d shares, backend %q", len(shares), mod.Backend())
	}
	for i, s := range shares {
		if s.Index != i+1 || s.Threshold != 3 || s.Generation != 1 || s.Module != mod.ID() || s.Partition != "issuing" || len(s.Value) != 32 {
			t.Fatalf("share %d: %+v", i, s)
		}
	}

	// Nobody knows the PIN any more: the operator's PIN is refused by a
	// tool we did not write.
	if out, err := pkcs11Tool(tokLifecycle, "--login", "--pin", userPIN, "--list-objects"); err == nil || !strings.Contains(out, "CKR_PIN_INCORRECT") {
		t.Fatalf("pkcs11-tool --login with the original PIN: err=%v\n%s", err, out)
	}

	part, err := mod.Partition("issuing")
	if err != nil {
		t.Fatal(err)
	}
	p := part.(*Partition)
	if _, err := p.GenerateKey(hsm.ECDSAP256, "x", false); !errors.Is(err, hsm.ErrSealed) {
		t.Fatalf("GenerateKey while sealed: %v, want ErrSealed", err)
	}

	// Two shares are not enough.
	st := activate(t, p, shares[0], shares[1])
	if st.State != hsm.StateCollecting || st.Presented != 2 || st.Threshold != 3 {
		t.Fatalf("after 2 shares: %+v", st)
	}
	if _, err := p.AddShare(shares[1]); !errors.Is(err, hsm.ErrDuplicateShare) {
		t.Fatalf("duplicate share: %v", err)
	}
	st = activate(t, p, shares[2])
	if st.State != hsm.StateActive {
		t.Fatalf("after 3 shares: %+v", st)
	}

	ec, err := p.GenerateKey(hsm.ECDSAP256, "ca-p256", false)
	if err != nil {
		t.Fatal(err)
	}
	rk, err := p.GenerateKey(hsm.RSA3072, "ca-rsa3072", false)
	if err != nil {
		t.Fatal(err)
	}
	if len(ec.ID) != 32 || ec.Type != hsm.ECDSAP256 || ec.Exportable || rk.Public.(*rsa.PublicKey).N.BitLen() != 3072 {
		t.Fatalf("key infos: %+v %+v", ec, rk)
	}
	if _, err := p.GenerateKey(hsm.ECDSAP384, "ca-p256", false); !errors.Is(err, hsm.ErrKeyExists) {
		t.Fatalf("duplicate label: %v", err)
	}
	if _, err := p.GenerateKey(hsm.Ed25519, "ed", false); !errors.Is(err, hsm.ErrUnsupported) || !strings.Contains(err.Error(), "ed25519") {
		t.Fatalf("ed25519: %v", err)
	}
	if _, err := p.GenerateKey(hsm.ECDSAP256, "exp", true); !errors.Is(err, hsm.ErrUnsupported) {
		t.Fatalf("exportable: %v", err)
	}
	if _, err := p.ExportKey(ec.ID, "age1xyz"); !errors.Is(err, hsm.ErrNotExportable) {
		t.Fatalf("ExportKey: %v", err)
	}
	if _, err := p.TransportKey(); !errors.Is(err, hsm.ErrUnsupported) {
		t.Fatalf("TransportKey: %v", err)
	}

	ecSigner, err := p.Signer("ca-p256")
	if err != nil {
		t.Fatal(err)
	}
	rsaSigner, err := p.Signer(rk.ID)
	if err != nil {
		t.Fatal(err)
	}
	signAndVerify(t, ecSigner, rsaSigner)

	// pkcs11-tool, as an outside observer, sees our keys as we made them.
	pin, err := p.testPIN()
	if err != nil {
		t.Fatal(err)
	}
	if len(pin) != 32 || strings.Trim(pin, "0123456789abcdef") != "" {
		t.Fatalf("derived PIN has unexpected form (length %d)", len(pin))
	}
	out, err := pkcs11Tool(tokLifecycle, "--login", "--pin", pin, "--list-objects", "--type", "privkey")
	if err != nil {
		t.Fatalf("pkcs11-tool --list-objects: %v\n%s", err, out)
	}
	for _, k := range []hsm.KeyInfo{ec, rk} {
		var block string
		for _, b := range objects(out) {
			if strings.Contains(b, "label:      "+k.Label+"\n") {
				block = b
			}
		}
		if block == "" {
			t.Fatalf("pkcs11-tool does not list %s:\n%s", k.Label, out)
		}
		for _, want := range []string{"Private Key Object", "ID:         " + k.ID, "sensitive", "always sensitive", "never extractable", "local", "sign"} {
			if !strings.Contains(block, want) {
				t.Errorf("pkcs11-tool block for %s lacks %q:\n%s", k.Label, want, block)
			}
		}
		if strings.Contains(block, "decrypt") || strings.Contains(block, "unwrap") || strings.Contains(block, "derive") {
			t.Errorf("key %s may decrypt, want sign only:\n%s", k.Label, block)
		}
	}
	out, err = pkcs11Tool(tokLifecycle, "--list-objects", "--type", "pubkey")
	if err != nil {
		t.Fatalf("pkcs11-tool --list-objects --type pubkey: %v\n%s", err, out)
	}
	for _, k := range []hsm.KeyInfo{ec, rk} {
		if !strings.Contains(out, "label:      "+k.Label+"\n") || !strings.Contains(out, "ID:         "+k.ID+"\n") {
			t.Errorf("public key %s (%s) not listed without login:\n%s", k.Label, k.ID, out)
		}
	}
	uri, err := p.KeyURI("ca-p256")
	if err != nil || !strings.Contains(uri, "id=%") || !strings.Contains(uri, "object=ca-p256") {
		t.Fatalf("KeyURI = %q, %v", uri, err)
	}
	if k, err := p.Key(uri); err != nil || k.ID != ec.ID {
		t.Fatalf("Key(URI) = %+v, %v", k, err)
	}

	// Seal: the signer stays usable as an object but refuses.
	if err := p.Seal(); err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("sealed"))
	if _, err := ecSigner.Sign(nil, digest[:], crypto.SHA256); !errors.Is(err, hsm.ErrSealed) {
		t.Fatalf("Sign while sealed: %v", err)
	}
	if out, err := pkcs11Tool(tokLifecycle, "--login", "--pin", userPIN, "--list-objects"); err == nil {
		t.Fatalf("original PIN works after seal:\n%s", out)
	}
	keys, err := p.Keys()
	if err != nil || len(keys) != 2 {
		t.Fatalf("Keys while sealed: %d, %v", len(keys), err)
	}

	// Any other three shares activate again.
	activate(t, p, shares[4], shares[3], shares[1])
	signAndVerify(t, ecSigner, rsaSigner)

	// Destroy a key: gone from the token and the records.
	tmp, err := p.GenerateKey(hsm.ECDSAP384, "tmp-p384", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.DestroyKey("tmp-p384"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Key(tmp.ID); !errors.Is(err, hsm.ErrKeyNotFound) {
		t.Fatalf("destroyed key still recorded: %v", err)
	}
	pin, _ = p.testPIN()
	if out, _ := pkcs11Tool(tokLifecycle, "--login", "--pin", pin, "--list-objects"); strings.Contains(out, "tmp-p384") {
		t.Fatalf("destroyed key still on the token:\n%s", out)
	}

	// Restart: everything sealed, keys listable, the same shares work.
	if err := mod.Close(); err != nil {
		t.Fatal(err)
	}
	m2, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	mod = m2
	part, _ = m2.Partition("issuing")
	if st, _ := part.Status(); st.State != hsm.StateSealed || st.Keys != 2 {
		t.Fatalf("after reopen: %+v", st)
	}
	ecSigner, _ = part.Signer(ec.ID)
	rsaSigner, _ = part.Signer("ca-rsa3072")
	if _, err := ecSigner.Sign(nil, digest[:], crypto.SHA256); !errors.Is(err, hsm.ErrSealed) {
		t.Fatalf("Sign after reopen: %v", err)
	}
	activate(t, part, shares[0], shares[2], shares[4])
	signAndVerify(t, ecSigner, rsaSigner)

	head, err := m2.Audit().Verify()
	if err != nil {
		t.Fatalf("audit verify: %v", err)
	}
	evs, err := m2.Audit().Events(0, 0)
	if err != nil || uint64(len(evs)) != head.Count {
		t.Fatalf("audit events: %d vs head %d, %v", len(evs), head.Count, err)
	}
	seen := map[string]int{}
	for _, e := range evs {
		seen[e.Type]++
		for k, v := range e.Fields {
			if strings.Contains(v, pin) {
				t.Fatalf("audit field %s holds the PIN", k)
			}
		}
	}
	for _, typ := range []string{"init", "share-accepted", "activate", "key-generate", "key-destroy", "sign", "seal"} {
		if seen[typ] == 0 {
			t.Errorf("audit log has no %s event (have %v)", typ, seen)
		}
	}
	if seen["sign"] < 9 {
		t.Errorf("audit log has %d sign events, want at least 9", seen["sign"])
	}
}

// signAndVerify signs with each signer in each supported mode and checks
// the signatures with the recorded public keys.
func signAndVerify(t *testing.T, ecSigner, rsaSigner crypto.Signer) {
	t.Helper()
	d256 := sha256.Sum256([]byte("hello hsmca"))
	sig, err := ecSigner.Sign(nil, d256[:], crypto.SHA256)
	if err != nil {
		t.Fatalf("ECDSA sign: %v", err)
	}
	if !ecdsa.VerifyASN1(ecSigner.Public().(*ecdsa.PublicKey), d256[:], sig) {
		t.Fatal("ECDSA signature does not verify")
	}
	pub := rsaSigner.Public().(*rsa.PublicKey)
	sig, err = rsaSigner.Sign(nil, d256[:], crypto.SHA256)
	if err != nil {
		t.Fatalf("RSA sign: %v", err)
	}
	if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, d256[:], sig); err != nil {
		t.Fatalf("RSA PKCS#1 v1.5: %v", err)
	}
	d384 := sha512.Sum384([]byte("hello"))
	pss := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA384}
	sig, err = rsaSigner.Sign(nil, d384[:], pss)
	if err != nil {
		t.Fatalf("RSA-PSS sign: %v", err)
	}
	if err := rsa.VerifyPSS(pub, crypto.SHA384, d384[:], sig, pss); err != nil {
		t.Fatalf("RSA-PSS: %v", err)
	}
	if _, err := ecSigner.Sign(nil, d256[:10], crypto.SHA256); err == nil {
		t.Fatal("short digest accepted")
	}
}

func TestInitWrongPIN(t *testing.T) {
	needSoftHSM(t)
	dir := t.TempDir()
	mod, err := Create(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer mod.Close()
	_, err = mod.InitTokenPartition(hsm.InitOptions{Partition: "p", Shares: 3, Threshold: 2}, tokenURI(tokBadPIN), []byte("wrong-pin"))
	if err == nil || !strings.Contains(err.Error(), "refused the PIN") || strings.Contains(err.Error(), "wrong-pin") {
		t.Fatalf("init with a wrong PIN: %v", err)
	}
	if names, _ := mod.Partitions(); len(names) != 0 {
		t.Fatalf("failed init left partitions %v", names)
	}
	if cfg, err := loadConfig(dir); err != nil || len(cfg.Partitions) != 0 {
		t.Fatalf("failed init left config %+v, %v", cfg, err)
	}
	// The operator's PIN still works: nothing was changed.
	if out, err := pkcs11Tool(tokBadPIN, "--login", "--pin", userPIN, "--list-objects"); err != nil {
		t.Fatalf("original PIN after failed init: %v\n%s", err, out)
	}
	for _, tc := range []struct{ uri, want string }{
		{"pkcs11:token=nope?module-path=" + softhsmLib, "no initialized token matches"},
		{"pkcs11:token=" + tokBadPIN, "module-path"},
		{"pkcs11:token=" + tokBadPIN + ";object=k?module-path=" + softhsmLib, "names an object"},
		{"pkcs11:token=" + tokBadPIN + "?module-path=/nonexistent/lib.so", "/nonexistent/lib.so"},
		{"pkcs11:token=x?pin-value=1234", "pin-value"},
	} {
		if _, err := mod.InitTokenPartition(hsm.InitOptions{Partition: "q", Shares: 3, Threshold: 2}, tc.uri, []byte(userPIN)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("InitTokenPartition(%s): %v, want %q", tc.uri, err, tc.want)
		}
	}
	if _, err := mod.InitTokenPartition(hsm.InitOptions{Partition: "q", Shares: 2, Threshold: 3}, tokenURI(tokBadPIN), []byte(userPIN)); err == nil {
		t.Error("threshold above shares accepted")
	}
}

func TestLockoutPersists(t *testing.T) {
	needSoftHSM(t)
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	mod, shares, dir := initModule(t, tokLockout, hsm.InitOptions{Partition: "root", Shares: 3, Threshold: 2}, Options{Clock: clock})
	p, _ := mod.Partition("root")
	bad := shares[0]
	bad.Value = append([]byte(nil), bad.Value...)
	bad.Value[0] ^= 1
	var err error
	for i := 0; i < 5; i++ {
		_, err = p.AddShare(bad)
		var se *hsm.ShareError
		if !errors.As(err, &se) || se.Index != 1 {
			t.Fatalf("bad share %d: %v", i, err)
		}
	}
	st, _ := p.Status()
	if st.LockedUntil.IsZero() || st.FailedShares != 5 {
		t.Fatalf("after 5 bad shares: %+v", st)
	}
	var le *hsm.LockedError
	if _, err := p.AddShare(shares[1]); !errors.As(err, &le) {
		t.Fatalf("good share while locked: %v", err)
	}
	mod.Close()

	m2, err := Open(dir, Options{Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	p, _ = m2.Partition("root")
	if _, err := p.AddShare(shares[1]); !errors.As(err, &le) {
		t.Fatalf("lockout did not survive reopen: %v", err)
	}
	advance(16 * time.Minute)
	if st := activate(t, p, shares[1], shares[2]); st.State != hsm.StateActive {
		t.Fatalf("after lockout expired: %+v", st)
	}
	evs, _ := m2.Audit().Events(0, 0)
	var rejected, lockouts int
	for _, e := range evs {
		switch e.Type {
		case "share-rejected":
			rejected++
		case "lockout":
			lockouts++
		}
	}
	if rejected != 5 || lockouts != 1 {
		t.Fatalf("audit: %d rejected, %d lockouts", rejected, lockouts)
	}
	if _, err := m2.Audit().Verify(); err != nil {
		t.Fatal(err)
	}
}

func TestPerOperation(t *testing.T) {
	needSoftHSM(t)
	mod, shares, _ := initModule(t, tokPerOp, hsm.InitOptions{Partition: "root", Shares: 3, Threshold: 2, Policy: hsm.PolicyPerOperation}, Options{})
	defer mod.Close()
	p, _ := mod.Partition("root")
	activate(t, p, shares[0], shares[1])
	k, err := p.GenerateKey(hsm.ECDSAP384, "root-key", false)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := p.Signer(k.ID)
	d := sha512.Sum384([]byte("root"))
	if _, err := s.Sign(nil, d[:], crypto.SHA384); err != nil {
		t.Fatal(err)
	}
	if st, _ := p.Status(); st.State != hsm.StateSealed {
		t.Fatalf("per-operation partition still %s after its signature", st.State)
	}
	if _, err := s.Sign(nil, d[:], crypto.SHA384); !errors.Is(err, hsm.ErrSealed) {
		t.Fatalf("second signature: %v", err)
	}

	if err := p.SetOperationSignatures(2); err != nil {
		t.Fatal(err)
	}
	activate(t, p, shares[2], shares[0])
	if st, _ := p.Status(); st.SignaturesLeft != 2 {
		t.Fatalf("SignaturesLeft = %d, want 2", st.SignaturesLeft)
	}
	// Concurrent callers cannot exceed the budget.
	var wg sync.WaitGroup
	var okCount, sealedCount int
	var cmu sync.Mutex
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.Sign(nil, d[:], crypto.SHA384)
			cmu.Lock()
			defer cmu.Unlock()
			switch {
			case err == nil:
				okCount++
			case errors.Is(err, hsm.ErrSealed):
				sealedCount++
			default:
				t.Errorf("Sign: %v", err)
			}
		}()
	}
	wg.Wait()
	if okCount != 2 || sealedCount != 2 {
		t.Fatalf("%d signatures, %d refused; want 2 and 2", okCount, sealedCount)
	}
	online, err := mod.Partition("root")
	if err != nil {
		t.Fatal(err)
	}
	if err := online.SetOperationSignatures(0); err == nil {
		t.Fatal("budget 0 accepted")
	}
}

func TestTokenGone(t *testing.T) {
	needSoftHSM(t)
	mod, shares, _ := initModule(t, tokGone, hsm.InitOptions{Partition: "issuing", Shares: 3, Threshold: 2}, Options{})
	defer mod.Close()
	part, _ := mod.Partition("issuing")
	p := part.(*Partition)
	activate(t, p, shares[0], shares[1])
	k, err := p.GenerateKey(hsm.ECDSAP256, "k", false)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := p.Signer(k.ID)
	d := sha256.Sum256([]byte("x"))
	if _, err := s.Sign(nil, d[:], crypto.SHA256); err != nil {
		t.Fatal(err)
	}
	// The token restarts: every session handle we hold is invalid.
	if err := p.testDropSessions(); err != nil {
		t.Fatal(err)
	}
	_, err = s.Sign(nil, d[:], crypto.SHA256)
	if !errors.Is(err, ErrTokenUnavailable) {
		t.Fatalf("Sign after the token went away: %v", err)
	}
	if st, _ := p.Status(); st.State != hsm.StateSealed {
		t.Fatalf("state %s after token loss, want sealed", st.State)
	}
	if p.Unavailable() == nil {
		t.Fatal("Unavailable() is nil after token loss")
	}
	_, err = s.Sign(nil, d[:], crypto.SHA256)
	if !errors.Is(err, hsm.ErrSealed) || !errors.Is(err, ErrTokenUnavailable) {
		t.Fatalf("Sign while unavailable: %v", err)
	}
	// Re-activation works in the same process.
	activate(t, p, shares[2], shares[0])
	sig, err := s.Sign(nil, d[:], crypto.SHA256)
	if err != nil {
		t.Fatalf("Sign after re-activation: %v", err)
	}
	if !ecdsa.VerifyASN1(k.Public.(*ecdsa.PublicKey), d[:], sig) {
		t.Fatal("signature after re-activation does not verify")
	}
	if p.Unavailable() != nil {
		t.Fatal("Unavailable() still set after re-activation")
	}
}

func TestReshare(t *testing.T) {
	needSoftHSM(t)
	mod, shares, dir := initModule(t, tokReshare, hsm.InitOptions{Partition: "issuing", Shares: 3, Threshold: 2}, Options{})
	part, _ := mod.Partition("issuing")
	p := part.(*Partition)
	if _, err := p.Reshare(4, 3); !errors.Is(err, hsm.ErrSealed) {
		t.Fatalf("Reshare while sealed: %v", err)
	}
	activate(t, p, shares[0], shares[1])
	oldPIN, _ := p.testPIN()
	k, err := p.GenerateKey(hsm.ECDSAP256, "k", false)
	if err != nil {
		t.Fatal(err)
	}
	// A dealt set changes nothing until its Commit: the token keeps its
	// PIN, and a discarded set can no longer be committed.
	pr, err := p.PrepareReshare(4, 3)
	if err != nil {
		t.Fatal(err)
	}
	if pin, _ := p.testPIN(); pin != oldPIN {
		t.Fatal("PrepareReshare changed the token PIN")
	}
	if out, err := pkcs11Tool(tokReshare, "--login", "--pin", oldPIN, "--list-objects"); err != nil {
		t.Fatalf("the PIN stopped working after PrepareReshare: %v\n%s", err, out)
	}
	pr.Discard()
	if err := pr.Commit(); err == nil {
		t.Fatal("a discarded re-share was committed")
	}
	if pin, _ := p.testPIN(); pin != oldPIN {
		t.Fatal("a discarded re-share changed the token PIN")
	}
	fresh, err := p.Reshare(4, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(fresh) != 4 || fresh[0].Generation != 2 || fresh[0].Threshold != 3 {
		t.Fatalf("new shares: %+v", fresh[0])
	}
	newPIN, _ := p.testPIN()
	if newPIN == oldPIN {
		t.Fatal("reshare kept the PIN")
	}
	if out, err := pkcs11Tool(tokReshare, "--login", "--pin", oldPIN, "--list-objects"); err == nil {
		t.Fatalf("old PIN still logs in after reshare:\n%s", out)
	}
	// A set dealt before another re-share went in is refused.
	stale, err := p.PrepareReshare(3, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer stale.Discard()
	if fresh, err = p.Reshare(4, 3); err != nil || fresh[0].Generation != 3 {
		t.Fatalf("second reshare: %v", err)
	}
	if err := stale.Commit(); err == nil || !strings.Contains(err.Error(), "re-shared since") {
		t.Fatalf("commit of a set dealt before another re-share: %v", err)
	}
	mod.Close()
	m2, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	part, _ = m2.Partition("issuing")
	var se *hsm.ShareError
	if _, err := part.AddShare(shares[0]); !errors.As(err, &se) || !se.WrongModule {
		t.Fatalf("old share after reshare: %v", err)
	}
	st := activate(t, part, fresh[3], fresh[1], fresh[0])
	if st.State != hsm.StateActive || st.Generation != 3 {
		t.Fatalf("after new shares: %+v", st)
	}
	s, _ := part.Signer(k.ID)
	d := sha256.Sum256([]byte("after reshare"))
	if _, err := s.Sign(nil, d[:], crypto.SHA256); err != nil {
		t.Fatal(err)
	}
}

func TestConfigStrict(t *testing.T) {
	good := `{"version":1,"module_id":"ab","created":"2026-01-01T00:00:00Z","partitions":[{"name":"p","token_uri":"pkcs11:token=t","policy":"online","threshold":2,"shares":3,"generation":1,"commitments":"AQ==","pin_length":32,"collect_window":0,"max_failures":0,"lockout_duration":0,"created":"2026-01-01T00:00:00Z"}]}`
	if _, err := parseConfig([]byte(good)); err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string]string{
		"unknown field": strings.Replace(good, `"version":1`, `"version":1,"pin":"x"`, 1),
		"version":       strings.Replace(good, `"version":1`, `"version":2`, 1),
		"bad uri":       strings.Replace(good, `pkcs11:token=t`, `pkcs11:tok=t`, 1),
		"threshold":     strings.Replace(good, `"threshold":2`, `"threshold":4`, 1),
		"policy":        strings.Replace(good, `"online"`, `"sometimes"`, 1),
		"pin length":    strings.Replace(good, `"pin_length":32`, `"pin_length":4`, 1),
		"trailing":      good + "{}",
	} {
		if _, err := parseConfig([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestDerivePIN(t *testing.T) {
	secret := make([]byte, 32)
	pc := &partitionConfig{Name: "p", Generation: 1, PINLength: 32}
	a, err := derivePIN(secret, "m1", pc)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := derivePIN(secret, "m2", pc)
	pc2 := *pc
	pc2.Generation = 2
	c, _ := derivePIN(secret, "m1", &pc2)
	if string(a) == string(b) || string(a) == string(c) || len(a) != 32 {
		t.Fatalf("PINs not bound to module and generation: %s %s %s", a, b, c)
	}
	if _, err := hex.DecodeString(string(a)); err != nil {
		t.Fatal(err)
	}
	pc.PINLength = 17
	if d, _ := derivePIN(secret, "m1", pc); len(d) != 17 {
		t.Fatalf("odd length: %d", len(d))
	}
}

func TestOneActivationPerToken(t *testing.T) {
	needSoftHSM(t)
	mod, shares, dir := initModule(t, tokDirect, hsm.InitOptions{Partition: "issuing", Shares: 2, Threshold: 1}, Options{})
	defer mod.Close()
	// A copy of the module directory names the same token.
	copyDir := filepath.Join(t.TempDir(), "copy")
	if out, err := exec.Command("cp", "-r", dir, copyDir).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	twin, err := Open(copyDir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer twin.Close()
	p1, _ := mod.Partition("issuing")
	p2, _ := twin.Partition("issuing")
	activate(t, p1, shares[0])
	if _, err := p2.AddShare(shares[1]); err == nil || !strings.Contains(err.Error(), "active for partition issuing") {
		t.Fatalf("second activation on the same token: %v", err)
	}
	if err := p1.Seal(); err != nil {
		t.Fatal(err)
	}
	if st := activate(t, p2, shares[1]); st.State != hsm.StateActive {
		t.Fatalf("twin after seal: %+v", st)
	}
}

func TestCreateRefusesUsedDirectory(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "module.db"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(dir, Options{}); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("Create in a used directory: %v", err)
	}
	empty := t.TempDir()
	m, err := Create(empty, Options{})
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	if _, err := Create(empty, Options{}); err == nil || !strings.Contains(err.Error(), "holds a module") {
		t.Fatalf("Create over a module: %v", err)
	}
	for _, f := range []string{ConfigFile, DBFile} {
		fi, err := os.Stat(filepath.Join(empty, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, fi.Mode(), err)
		}
	}
	m2, err := Open(empty, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	if _, err := Open(empty, Options{}); !errors.Is(err, hsm.ErrModuleInUse) {
		t.Fatalf("second Open: %v", err)
	}
	if _, err := m2.Partition("x"); !errors.Is(err, hsm.ErrNoPartition) {
		t.Fatalf("Partition(x): %v", err)
	}
	if _, err := m2.InitPartition(hsm.InitOptions{Partition: "x", Shares: 1, Threshold: 1}); err == nil || !strings.Contains(err.Error(), "InitTokenPartition") {
		t.Fatalf("InitPartition: %v", err)
	}
}

// TestSignWhileSealing races signers against seal and re-activation; run
// with -race. Every signature either verifies or fails with ErrSealed.
func TestSignWhileSealing(t *testing.T) {
	needSoftHSM(t)
	mod, shares, _ := initModule(t, tokRace, hsm.InitOptions{Partition: "issuing", Shares: 2, Threshold: 1}, Options{})
	defer mod.Close()
	p, _ := mod.Partition("issuing")
	activate(t, p, shares[0])
	k, err := p.GenerateKey(hsm.ECDSAP256, "k", false)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := p.Signer(k.ID)
	d := sha256.Sum256([]byte("race"))
	var wg sync.WaitGroup
	var ok, sealed atomic.Int64
	var stop atomic.Bool
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100000 && !stop.Load(); i++ {
				sig, err := s.Sign(nil, d[:], crypto.SHA256)
				switch {
				case err == nil:
					if !ecdsa.VerifyASN1(k.Public.(*ecdsa.PublicKey), d[:], sig) {
						t.Error("bad signature")
						return
					}
					ok.Add(1)
				case errors.Is(err, hsm.ErrSealed):
					sealed.Add(1)
				default:
					t.Errorf("Sign: %v", err)
					return
				}
			}
		}()
	}
	// Seal and re-activate 10 times, each time after the signers made
	// progress, so that seals land while signatures are in flight.
	deadline := time.Now().Add(time.Minute)
	for i := range 10 {
		before := ok.Load()
		for ok.Load() == before && time.Now().Before(deadline) {
			runtime.Gosched()
		}
		if err := p.Seal(); err != nil {
			t.Fatal(err)
		}
		if _, err := p.AddShare(shares[i%2]); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if ok.Load() < 10 {
		t.Fatalf("%d signed (%d refused as sealed); want at least 10", ok.Load(), sealed.Load())
	}
	t.Logf("%d signed, %d refused as sealed", ok.Load(), sealed.Load())
	if _, err := mod.Audit().Verify(); err != nil {
		t.Fatal(err)
	}
}
