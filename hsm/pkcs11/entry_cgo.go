//go:build cgo

package pkcs11

import "github.com/hsmca/hsmca/hsm"

// Compiled reports whether PKCS#11 support is in this binary.
const Compiled = true

// OpenModule opens the pkcs11 module in dir as an hsm.Module (see Open).
func OpenModule(dir string, opts Options) (hsm.Module, error) {
	m, err := Open(dir, opts)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// CreateModule creates an empty pkcs11 module in dir (see Create).
func CreateModule(dir string, opts Options) (hsm.Module, error) {
	m, err := Create(dir, opts)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// InitModule initializes partition init.Partition on the token that
// tokenURI names, in the module in dir: it creates the module if dir holds
// none, and opens it otherwise. See Module.InitTokenPartition for what
// happens to the token PIN. The returned module is open; the caller closes
// it and stores the shares. With an error, shares are returned (and the
// module is open) only when the token's PIN was changed before the
// failure: the caller must store them then too.
func InitModule(dir string, opts Options, init hsm.InitOptions, tokenURI string, currentPIN []byte) (hsm.Module, []hsm.Share, error) {
	var m *Module
	var err error
	if IsModuleDir(dir) {
		m, err = Open(dir, opts)
	} else {
		m, err = Create(dir, opts)
	}
	if err != nil {
		return nil, nil, err
	}
	shares, err := m.InitTokenPartition(init, tokenURI, currentPIN)
	if err != nil && len(shares) == 0 {
		m.Close()
		return nil, nil, err
	}
	return m, shares, err
}
