//go:build !cgo

package pkcs11

import (
	"errors"
	"strings"
	"testing"

	"github.com/hsmca/hsmca/hsm"
)

func TestNotCompiled(t *testing.T) {
	if Compiled {
		t.Fatal("Compiled is true in a !cgo build")
	}
	_, err := OpenModule(t.TempDir(), Options{})
	if !errors.Is(err, ErrNotCompiled) {
		t.Fatalf("OpenModule: %v", err)
	}
	_, _, err = InitModule(t.TempDir(), Options{}, hsm.InitOptions{Partition: "p", Shares: 1, Threshold: 1}, "pkcs11:token=t", []byte("1234"))
	if !errors.Is(err, ErrNotCompiled) || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Fatalf("InitModule: %v", err)
	}
}
