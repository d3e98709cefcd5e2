//go:build !cgo

package pkcs11

import "github.com/hsmca/hsmca/hsm"

// Compiled reports whether PKCS#11 support is in this binary.
const Compiled = false

// OpenModule returns ErrNotCompiled: this binary was built without cgo.
func OpenModule(dir string, opts Options) (hsm.Module, error) {
	return nil, ErrNotCompiled
}

// CreateModule returns ErrNotCompiled: this binary was built without cgo.
func CreateModule(dir string, opts Options) (hsm.Module, error) {
	return nil, ErrNotCompiled
}

// InitModule returns ErrNotCompiled: this binary was built without cgo.
func InitModule(dir string, opts Options, init hsm.InitOptions, tokenURI string, currentPIN []byte) (hsm.Module, []hsm.Share, error) {
	return nil, nil, ErrNotCompiled
}
