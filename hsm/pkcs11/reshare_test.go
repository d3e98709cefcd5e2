//go:build cgo

package pkcs11

import (
	"errors"
	"strings"
	"testing"

	"github.com/hsmca/hsmca/hsm"
)

// A re-share dealt in one activation cannot be committed in another: a
// seal and a new activation between PrepareReshare and Commit make Commit
// fail and leave the token's PIN and the settings as they were
// (hsm.PendingReshare).
func TestReshareCommitAfterSealAndReactivate(t *testing.T) {
	needSoftHSM(t)
	mod, shares, _ := initModule(t, tokReshareEpoch, hsm.InitOptions{Partition: "issuing", Shares: 3, Threshold: 2}, Options{})
	defer mod.Close()
	part, _ := mod.Partition("issuing")
	p := part.(*Partition)
	activate(t, p, shares[0], shares[1])
	pin, _ := p.testPIN()
	pr, err := p.PrepareReshare(3, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Discard()
	if err := p.Seal(); err != nil {
		t.Fatal(err)
	}
	activate(t, p, shares[1], shares[2])
	if err := pr.Commit(); err == nil || !strings.Contains(err.Error(), "sealed and activated again") {
		t.Fatalf("Commit in a later activation: %v", err)
	}
	if now, _ := p.testPIN(); now != pin {
		t.Fatal("the refused commit changed the token PIN")
	}
	if st, _ := p.Status(); st.Generation != 1 {
		t.Fatalf("generation %d after a refused commit", st.Generation)
	}
}

// When the settings cannot be stored after the PIN changed, and the
// previous PIN cannot be put back either, Commit says so (not "nothing
// changed"), wraps hsm.ErrReshareIncomplete and marks its commit-failed
// record result=incomplete. The partition keeps the PIN the token answers
// to, so a re-share in the same activation repairs the module.
func TestReshareIncompleteSaysPINChanged(t *testing.T) {
	needSoftHSM(t)
	mod, shares, dir := initModule(t, tokReshareIncomplete, hsm.InitOptions{Partition: "issuing", Shares: 2, Threshold: 2}, Options{})
	defer func() { mod.Close() }()
	part, _ := mod.Partition("issuing")
	p := part.(*Partition)
	activate(t, p, shares...)
	oldPIN, _ := p.testPIN()
	p.commitFault = func(step string) error { return errors.New("injected: " + step + " failed") }
	pr, err := p.PrepareReshare(2, 2)
	if err != nil {
		t.Fatal(err)
	}
	err = pr.Commit()
	pr.Discard()
	p.commitFault = nil
	if !errors.Is(err, hsm.ErrReshareIncomplete) {
		t.Fatalf("Commit: %v, want ErrReshareIncomplete", err)
	}
	for _, want := range []string{"PIN changed", "could not be put back", "keep both share sets"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if strings.Contains(err.Error(), "current shares still work") {
		t.Errorf("error says nothing changed: %v", err)
	}
	evs, err := mod.Audit().Events(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	last := evs[len(evs)-1]
	if last.Type != "commit-failed" || last.Fields["event"] != "reshare" || last.Fields["result"] != "incomplete" {
		t.Fatalf("last audit record: %+v", last)
	}
	newPIN, _ := p.testPIN()
	if newPIN == oldPIN {
		t.Fatal("the partition still holds the PIN the token no longer answers to")
	}
	if out, err := pkcs11Tool(tokReshareIncomplete, "--login", "--pin", newPIN, "--list-objects"); err != nil {
		t.Fatalf("the token does not answer to the PIN the partition holds: %v\n%s", err, out)
	}
	fresh, err := p.Reshare(2, 2)
	if err != nil {
		t.Fatalf("re-share after an incomplete one: %v", err)
	}
	mod.Close()
	m2, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	mod = m2
	part, _ = m2.Partition("issuing")
	if st := activate(t, part, fresh...); st.State != hsm.StateActive {
		t.Fatalf("after the repairing re-share: %+v", st)
	}
}
