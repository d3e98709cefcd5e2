package soft

import (
	"crypto/rand"
	"errors"
	"io"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/hsmca/hsmca/hsm"
)

// A per-operation partition seals itself after its last signature without
// opMu. A key operation that checked the partition before that signature
// was taken must then fail with ErrSealed at its commit, leaving no key
// stored, destroyed or exported and no record of one, and the partition
// sealed without its master key.
func TestKeyOperationsRacePerOperationAutoSeal(t *testing.T) {
	tests := []struct {
		event string
		// run performs the operation on root; victim is a key of root
		// other than the one that signs, blob an export wrapped for root.
		run func(t *testing.T, p *Partition, victim hsm.KeyInfo, blob []byte) error
		// changed reports whether the partition's keys show the
		// operation's effect.
		changed func(keys []hsm.KeyInfo, victim hsm.KeyInfo) bool
	}{
		{
			event: "key-generate",
			run: func(t *testing.T, p *Partition, _ hsm.KeyInfo, _ []byte) error {
				_, err := p.GenerateKey(hsm.ECDSAP256, "late", false)
				return err
			},
			changed: func(keys []hsm.KeyInfo, _ hsm.KeyInfo) bool {
				return slices.ContainsFunc(keys, func(k hsm.KeyInfo) bool { return k.Label == "late" })
			},
		},
		{
			event: "import",
			run: func(t *testing.T, p *Partition, _ hsm.KeyInfo, blob []byte) error {
				_, err := p.ImportKey(blob)
				return err
			},
			changed: func(keys []hsm.KeyInfo, _ hsm.KeyInfo) bool {
				return slices.ContainsFunc(keys, func(k hsm.KeyInfo) bool { return k.Label == "imported" })
			},
		},
		{
			event: "key-destroy",
			run: func(t *testing.T, p *Partition, victim hsm.KeyInfo, _ []byte) error {
				return p.DestroyKey(victim.ID)
			},
			changed: func(keys []hsm.KeyInfo, victim hsm.KeyInfo) bool {
				return !slices.ContainsFunc(keys, func(k hsm.KeyInfo) bool { return k.ID == victim.ID })
			},
		},
		{
			event: "export",
			run: func(t *testing.T, p *Partition, victim hsm.KeyInfo, _ []byte) error {
				blob, err := p.ExportKey(victim.ID, mustRecipient(t))
				if err != nil && blob != nil {
					t.Error("ExportKey returned a blob with its error")
				}
				return err
			},
			changed: func([]hsm.KeyInfo, hsm.KeyInfo) bool { return false }, // checked by run
		},
	}
	for _, tc := range tests {
		t.Run(tc.event, func(t *testing.T) {
			src := newFixture(t)
			ss := src.init(t, "issuing", 1, 1, hsm.PolicyOnline)
			sp := src.part(t, "issuing")
			activate(t, sp, ss)
			ik, err := sp.GenerateKey(hsm.ECDSAP256, "imported", true)
			if err != nil {
				t.Fatal(err)
			}

			f := newFixture(t)
			shares := f.init(t, "root", 1, 1, hsm.PolicyPerOperation)
			p := f.part(t, "root").(*Partition)
			tk, err := p.TransportKey()
			if err != nil {
				t.Fatal(err)
			}
			blob, err := sp.ExportKey(ik.ID, tk)
			if err != nil {
				t.Fatal(err)
			}
			activate(t, p, shares)
			k, err := p.GenerateKey(hsm.ECDSAP256, "signs", false)
			if err != nil {
				t.Fatal(err)
			}
			victim, err := p.GenerateKey(hsm.ECDSAP256, "victim", true)
			if err != nil {
				t.Fatal(err)
			}
			s, err := p.Signer(k.ID)
			if err != nil {
				t.Fatal(err)
			}
			before, err := f.m.Audit().Head()
			if err != nil {
				t.Fatal(err)
			}

			// The only signature of this activation is taken, and the
			// partition reseals, after the operation's first check and
			// before its commit.
			var fired int
			var signErr error
			f.m.beforeCommit = func(event string) {
				if event == tc.event && fired == 0 {
					fired++
					signErr = signVerify(t, s)
				}
			}
			err = tc.run(t, p, victim, blob)
			f.m.beforeCommit = nil
			if fired != 1 || signErr != nil {
				t.Fatalf("signature in the window: taken %d times, %v", fired, signErr)
			}
			if !errors.Is(err, hsm.ErrSealed) {
				t.Errorf("%s on a partition that sealed itself meanwhile: %v, want ErrSealed", tc.event, err)
			}

			p.mu.RLock()
			active, master := p.active, p.master
			p.mu.RUnlock()
			if active || master != nil {
				t.Errorf("after the operation: active %v, master key in memory %v", active, master != nil)
			}
			keys, err := p.Keys()
			if err != nil {
				t.Fatal(err)
			}
			if tc.changed(keys, victim) {
				t.Errorf("%s took effect on a sealed partition: keys %v", tc.event, keys)
			}
			evs, err := f.m.Audit().Events(before.Count+1, 0)
			if err != nil {
				t.Fatal(err)
			}
			var types []string
			for _, ev := range evs {
				types = append(types, ev.Type)
			}
			// Only the signature and the reseal it caused.
			if !slices.Equal(types, []string{"sign", "seal"}) {
				t.Errorf("audit records after the race: %v, want [sign seal]", types)
			}
			if _, err := f.m.Audit().Verify(); err != nil {
				t.Error(err)
			}
			// The partition works again with a new activation.
			activate(t, p, shares)
			if err := tc.run(t, p, victim, blob); err != nil {
				t.Errorf("%s after activating again: %v", tc.event, err)
			}
		})
	}
}

// hookReader reads from crypto/rand, first running the hook it holds, once.
type hookReader struct{ hook atomic.Pointer[func()] }

func (r *hookReader) Read(b []byte) (int, error) {
	if h := r.hook.Swap(nil); h != nil {
		(*h)()
	}
	return rand.Read(b)
}

var _ io.Reader = (*hookReader)(nil)

// A key generated in one activation is not stored in the next: GenerateKey
// generates outside opMu, and if the partition is sealed and activated
// again meanwhile, it fails with ErrSealed and stores nothing.
func TestGenerateKeyAcrossReactivation(t *testing.T) {
	rnd := new(hookReader)
	m, err := Open(filepath.Join(t.TempDir(), "module"), Options{Rand: rnd})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	shares, err := m.InitPartition(hsm.InitOptions{Partition: "issuing", Shares: 1, Threshold: 1})
	if err != nil {
		t.Fatal(err)
	}
	hp, err := m.Partition("issuing")
	if err != nil {
		t.Fatal(err)
	}
	activate(t, hp, shares)
	fired := false
	h := func() {
		// Ed25519 key generation reads its seed from Options.Rand.
		fired = true
		if err := hp.Seal(); err != nil {
			t.Error(err)
		}
		activate(t, hp, shares)
	}
	rnd.hook.Store(&h)
	_, err = hp.GenerateKey(hsm.Ed25519, "between", false)
	if !fired {
		t.Fatal("the partition was not sealed and activated again during key generation")
	}
	if !errors.Is(err, hsm.ErrSealed) {
		t.Errorf("GenerateKey across a re-activation: %v, want ErrSealed", err)
	}
	if keys, err := hp.Keys(); err != nil || len(keys) != 0 {
		t.Errorf("keys after GenerateKey across a re-activation: %v, %v", keys, err)
	}
	if _, err := hp.GenerateKey(hsm.Ed25519, "after", false); err != nil {
		t.Errorf("GenerateKey in the new activation: %v", err)
	}
}
