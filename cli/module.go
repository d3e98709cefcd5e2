package cli

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/hsmca/hsmca/hsm"
	"github.com/hsmca/hsmca/hsm/pkcs11"
	"github.com/hsmca/hsmca/hsm/soft"
)

// defaultModuleDir is where the hsm commands look for the module when
// --module is not given. The module location comes from flags only, never
// from the environment, so that a script says which module it touches.
const defaultModuleDir = "./module"

// Backend names accepted by `hsm init --backend`.
const (
	backendSoft   = "soft"
	backendPKCS11 = "pkcs11"
)

// backendOptions are the flags of `hsm init` that choose and configure the
// backend of a new module. Only `hsm init` creates modules; every other
// command finds the backend from what is stored in the module directory.
type backendOptions struct {
	// Backend is "soft" or "pkcs11"; empty means the existing module's
	// backend, or soft for a new module.
	Backend string
	// TokenURI and PINFile configure the pkcs11 backend (issue 3): the RFC
	// 7512 URI of the token a partition maps to, and a file holding the
	// token's current user PIN (never a flag: secrets come from files).
	TokenURI string
	PINFile  string
}

// addBackendFlags registers the backend flags on `hsm init`.
func addBackendFlags(cmd *cobra.Command, o *backendOptions) {
	cmd.Flags().StringVar(&o.Backend, "backend", "", "module backend: soft (the default for a new module) or pkcs11")
	cmd.Flags().StringVar(&o.TokenURI, "token-uri", "", "pkcs11: RFC 7512 pkcs11: URI of the token for this partition")
	cmd.Flags().StringVar(&o.PINFile, "pin-file", "", "pkcs11: file holding the token's current user PIN (replaced at init)")
}

// validate checks the combination of backend flags before anything is
// created.
func (o backendOptions) validate() error {
	switch o.Backend {
	case "":
	case backendSoft:
		if o.TokenURI != "" || o.PINFile != "" {
			return usagef("--token-uri and --pin-file apply only to --backend pkcs11")
		}
	case backendPKCS11:
		if o.TokenURI == "" {
			return usagef("--backend pkcs11 needs --token-uri pkcs11:token=...?module-path=/path/to/library.so")
		}
	default:
		return usagef("unknown backend %q (want soft or pkcs11)", o.Backend)
	}
	return nil
}

// moduleBackend reports which backend the module directory dir holds, or ""
// when dir holds no module.
func moduleBackend(dir string) string {
	if soft.Exists(dir) {
		return backendSoft
	}
	if pkcs11.IsModuleDir(dir) {
		return backendPKCS11
	}
	return ""
}

// openModule opens the existing module in dir with whatever backend it was
// created with. A directory without a module is an error whose hint says how
// to create one; a module held by another process (typically a running
// `hsmca ca serve`) is an error whose hint says how to reach it instead.
func openModule(dir string) (hsm.Module, error) {
	switch moduleBackend(dir) {
	case backendSoft:
		return openSoft(dir)
	case backendPKCS11:
		m, err := pkcs11.OpenModule(dir, pkcs11.Options{})
		return m, pkcs11Error(moduleOpenError(dir, err))
	default:
		return nil, noModuleError(dir)
	}
}

// openModuleReadOnly opens the existing module in dir to read its audit
// log (`hsm audit verify` and `list`). A soft module is opened read-only:
// nothing in dir is created or written, so an auditor can check a copy,
// also on read-only media, and leave it as it was. A module held by
// another process is refused as by openModule.
func openModuleReadOnly(dir string) (hsm.Module, error) {
	if moduleBackend(dir) != backendSoft {
		return openModule(dir)
	}
	m, err := soft.Open(dir, soft.Options{ReadOnly: true})
	if err != nil {
		return nil, moduleOpenError(dir, err)
	}
	return m, nil
}

// createModule creates a new, empty module in dir with the backend chosen by
// o. It refuses a directory that already holds a module.
func createModule(dir string, o backendOptions) (hsm.Module, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	if b := moduleBackend(dir); b != "" {
		return nil, fmt.Errorf("%s already holds a %s module", dir, b)
	}
	switch o.Backend {
	case "", backendSoft:
		if o.TokenURI != "" || o.PINFile != "" {
			return nil, usagef("--token-uri and --pin-file apply only to --backend pkcs11")
		}
		return openSoft(dir)
	case backendPKCS11:
		m, err := pkcs11.CreateModule(dir, pkcs11.Options{})
		return m, pkcs11Error(err)
	}
	return nil, usagef("unknown backend %q (want soft or pkcs11)", o.Backend)
}

// openOrCreateModule opens the module in dir, creating it with o when dir
// holds none. created says which happened. A --backend that disagrees with
// the existing module is a usage error.
func openOrCreateModule(dir string, o backendOptions) (m hsm.Module, created bool, err error) {
	if err := o.validate(); err != nil {
		return nil, false, err
	}
	if b := moduleBackend(dir); b != "" {
		if o.Backend != "" && b != o.Backend {
			return nil, false, usagef("%s holds a %s module, not %s", dir, b, o.Backend)
		}
		m, err := openModule(dir)
		return m, false, err
	}
	m, err = createModule(dir, o)
	return m, err == nil, err
}

// openSoft opens (creating on first use) the soft module in dir.
func openSoft(dir string) (hsm.Module, error) {
	m, err := soft.Open(dir, soft.Options{})
	if err != nil {
		return nil, moduleOpenError(dir, err)
	}
	return m, nil
}

// initPartition creates a partition in m. Backends whose partitions need
// more than hsm.InitOptions (a PKCS#11 partition maps to a token and needs
// its URI and current PIN) branch here on m.Backend().
func initPartition(m hsm.Module, opts hsm.InitOptions, o backendOptions) ([]hsm.Share, error) {
	switch m.Backend() {
	case backendSoft:
		if o.TokenURI != "" || o.PINFile != "" {
			return nil, usagef("--token-uri and --pin-file apply only to pkcs11 modules")
		}
	case backendPKCS11:
		return initPKCS11Partition(m, opts, o)
	}
	return m.InitPartition(opts)
}

// initPKCS11Partition maps a new partition to the token --token-uri names,
// logging in once with the current user PIN from --pin-file (or the URI's
// pin-source); the module replaces that PIN with one only the shares can
// rebuild.
func initPKCS11Partition(m hsm.Module, opts hsm.InitOptions, o backendOptions) ([]hsm.Share, error) {
	ti, ok := m.(pkcs11.TokenInitializer)
	if !ok {
		return nil, pkcs11Error(pkcs11.ErrNotCompiled)
	}
	if o.TokenURI == "" {
		return nil, usagef("a pkcs11 partition needs --token-uri pkcs11:token=...?module-path=/path/to/library.so")
	}
	u, err := pkcs11.ParseURI(o.TokenURI)
	if err != nil {
		return nil, usageError{err}
	}
	pinFile := o.PINFile
	if pinFile == "" {
		if pinFile, err = u.PinFile(); err != nil {
			return nil, usageError{err}
		}
	}
	if pinFile == "" {
		return nil, usagef("a pkcs11 partition needs --pin-file FILE holding the token's current user PIN")
	}
	pin, err := os.ReadFile(pinFile)
	if err != nil {
		return nil, usagef("read --pin-file: %v", err)
	}
	defer clear(pin)
	n := len(pin)
	for n > 0 && (pin[n-1] == '\n' || pin[n-1] == '\r') {
		n--
	}
	shares, err := ti.InitTokenPartition(opts, o.TokenURI, pin[:n])
	if err != nil {
		return nil, withHint(err, "check --token-uri (list tokens with `pkcs11-tool --module LIB --list-token-slots`) and that --pin-file holds the token's current user PIN")
	}
	return shares, nil
}

// pkcs11Error adds a hint to the error of a binary built without cgo.
func pkcs11Error(err error) error {
	if errors.Is(err, pkcs11.ErrNotCompiled) {
		return withHint(err, "build hsmca with CGO_ENABLED=1 (and a C compiler) to use PKCS#11 tokens, or use --backend soft")
	}
	return err
}

func moduleOpenError(dir string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, hsm.ErrModuleInUse) {
		return withHint(err, "another hsmca process (for example `hsmca ca serve`) has "+dir+" open; stop it first, or act on the running CA through its admin API")
	}
	return err
}

func noModuleError(dir string) error {
	what := "no hsmca module in " + dir
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		what = "module directory " + dir + " does not exist"
	}
	return withHint(errors.New(what),
		"create one with `hsmca hsm init --module "+shellQuote(dir)+" --partition issuing --shares 5 --threshold 3 --out ./shares`, or point --module at an existing module")
}

// shellQuote quotes s for a hint line when it holds characters a shell
// would interpret.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._-/+=:,@", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
