//go:build cgo

package pkcs11

import (
	"path/filepath"
	"testing"

	"github.com/hsmca/hsmca/hsm"
)

// A failure after the token has taken its new PIN (here the audit record
// of the init cannot be written) returns the shares with the error: they
// are the only way into the token now, and they work.
func TestInitFailureAfterPINChangeReturnsWorkingShares(t *testing.T) {
	needSoftHSM(t)
	dir := filepath.Join(t.TempDir(), "module")
	m, err := Create(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	m.log.Close() // the init's audit record cannot be written
	shares, err := m.InitTokenPartition(hsm.InitOptions{Partition: "p", Shares: 3, Threshold: 2}, tokenURI(tokInitFail), []byte(userPIN))
	m.Close()
	if err == nil {
		t.Fatal("init with a closed audit log succeeded")
	}
	if len(shares) != 3 {
		t.Fatalf("init failed after the PIN change (%v) and returned %d shares; the token can no longer be logged in to", err, len(shares))
	}
	if out, err := pkcs11Tool(tokInitFail, "--login", "--pin", userPIN, "--list-objects"); err == nil {
		t.Fatalf("the old PIN still logs in: %s", out)
	}
	m2, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	p, err := m2.TokenPartition("p")
	if err != nil {
		t.Fatal(err)
	}
	var st hsm.PartitionStatus
	for _, s := range shares[:2] {
		if st, err = p.AddShare(s); err != nil {
			t.Fatal(err)
		}
	}
	if st.State != hsm.StateActive {
		t.Fatalf("two of the returned shares leave the partition %s", st.State)
	}
	if _, err := p.GenerateKey(hsm.ECDSAP256, "after-failed-init", false); err != nil {
		t.Fatalf("generate a key with the recovered PIN: %v", err)
	}
}
