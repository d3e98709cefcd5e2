//go:build cgo

package pkcs11

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"unsafe"

	"github.com/ThalesGroup/crypto11"
	p11 "github.com/miekg/pkcs11"
)

// A PKCS#11 library is process-global state: C_Initialize may run once per
// process, and crypto11 keeps its own reference count per library path and
// calls C_Finalize when its last Context closes. hsmca loads each library
// once per process and keeps it loaded while any module uses it:
//
//   - a "keep-alive" crypto11 Context (no login) holds crypto11's reference
//     count above zero, so sealing a partition (closing its Context) never
//     finalizes the library under another partition;
//   - a raw miekg/pkcs11 handle to the same library, never initialized by
//     hsmca itself once crypto11 owns it, performs what crypto11 does not
//     offer: finding a token by URI, C_SetPIN, C_Logout and
//     C_CloseAllSessions.

// library is one loaded PKCS#11 library.
type library struct {
	path string
	raw  *p11.Ctx
	keep *crypto11.Context
	refs int
}

var libraries = struct {
	sync.Mutex
	m map[string]*library
}{m: map[string]*library{}}

// canonicalLibPath resolves symlinks so that one library is never loaded
// under two names (which crypto11 would try to initialize twice).
func canonicalLibPath(path string) (string, error) {
	if path == "" {
		return "", errors.New("hsm/pkcs11: no PKCS#11 library path: add ?module-path=/path/to/library.so to the token URI")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("hsm/pkcs11: library path %s: %w", path, err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", fmt.Errorf("hsm/pkcs11: PKCS#11 library %s: %w", path, err)
	}
	return real, nil
}

// acquireLibrary loads (once per process) the library at path, using the
// token that sel matches to anchor the keep-alive Context. Each call must
// be paired with release.
func acquireLibrary(path string, sel *URI) (*library, error) {
	path, err := canonicalLibPath(path)
	if err != nil {
		return nil, err
	}
	libraries.Lock()
	defer libraries.Unlock()
	if l, ok := libraries.m[path]; ok {
		l.refs++
		return l, nil
	}
	raw := p11.New(path)
	if raw == nil {
		return nil, fmt.Errorf("hsm/pkcs11: cannot load PKCS#11 library %s", path)
	}
	// Find the anchor token with our own handle. If crypto11 (or anyone)
	// has initialized the library already, it stays initialized; otherwise
	// we initialize only to look and finalize again so that crypto11 can
	// own initialization.
	initErr := raw.Initialize()
	weInit := initErr == nil
	if initErr != nil && !isCode(initErr, p11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		raw.Destroy()
		return nil, fmt.Errorf("hsm/pkcs11: initialize %s: %w", path, initErr)
	}
	slot, _, findErr := findToken(raw, sel)
	if weInit {
		_ = raw.Finalize()
	}
	if findErr != nil {
		raw.Destroy()
		return nil, findErr
	}
	slotNum := int(slot)
	keep, err := crypto11.Configure(&crypto11.Config{
		Path:              path,
		SlotNumber:        &slotNum,
		LoginNotSupported: true,
		MaxSessions:       2,
	})
	if err != nil {
		raw.Destroy()
		return nil, fmt.Errorf("hsm/pkcs11: open %s: %w", path, err)
	}
	l := &library{path: path, raw: raw, keep: keep, refs: 1}
	libraries.m[path] = l
	return l, nil
}

// release drops one reference; the last one unloads the library.
func (l *library) release() {
	libraries.Lock()
	defer libraries.Unlock()
	l.refs--
	if l.refs > 0 {
		return
	}
	delete(libraries.m, l.path)
	_ = l.keep.Close()
	l.raw.Destroy()
}

// claims records which partition is logged in to which token in this
// process. PKCS#11 login state is per process and token, so two
// activations on one token (two module directories naming the same token)
// would share a login and one's seal would log the other out.
var claims = struct {
	sync.Mutex
	m map[string]string // library path + slot → "module/partition"
}{m: map[string]string{}}

func claimKey(lib string, slot uint) string { return fmt.Sprintf("%s\x00%d", lib, slot) }

// claimToken reserves the token in slot for owner until unclaimToken.
func claimToken(lib string, slot uint, owner string) error {
	claims.Lock()
	defer claims.Unlock()
	k := claimKey(lib, slot)
	if cur, ok := claims.m[k]; ok && cur != owner {
		return fmt.Errorf("hsm/pkcs11: the token is active for partition %s in this process already; seal it first", cur)
	}
	claims.m[k] = owner
	return nil
}

func unclaimToken(lib string, slot uint, owner string) {
	claims.Lock()
	defer claims.Unlock()
	k := claimKey(lib, slot)
	if claims.m[k] == owner {
		delete(claims.m, k)
	}
}

// tokenInfo is what findToken reports about the token it matched.
type tokenInfo struct {
	Label, Manufacturer, Model, Serial string
	MinPinLen, MaxPinLen               uint
	Flags                              uint
}

// findToken returns the one slot whose token matches every token and slot
// attribute of sel. Zero or several matches are errors: hsmca never guesses
// which token holds a partition.
func findToken(raw *p11.Ctx, sel *URI) (uint, tokenInfo, error) {
	slots, err := raw.GetSlotList(true)
	if err != nil {
		return 0, tokenInfo{}, fmt.Errorf("hsm/pkcs11: list slots: %w", err)
	}
	var found []uint
	var info tokenInfo
	for _, slot := range slots {
		if sel.SlotID != nil && uint64(slot) != *sel.SlotID {
			continue
		}
		ti, err := raw.GetTokenInfo(slot)
		if err != nil {
			continue // a slot whose token vanished between the calls
		}
		if ti.Flags&p11.CKF_TOKEN_INITIALIZED == 0 {
			continue
		}
		if !matches(sel.Token, ti.Label) || !matches(sel.Serial, ti.SerialNumber) ||
			!matches(sel.Manufacturer, ti.ManufacturerID) || !matches(sel.Model, ti.Model) {
			continue
		}
		if sel.SlotDescription != "" || sel.SlotManufacturer != "" {
			si, err := raw.GetSlotInfo(slot)
			if err != nil || !matches(sel.SlotDescription, si.SlotDescription) || !matches(sel.SlotManufacturer, si.ManufacturerID) {
				continue
			}
		}
		found = append(found, slot)
		info = tokenInfo{
			Label: trim(ti.Label), Manufacturer: trim(ti.ManufacturerID), Model: trim(ti.Model), Serial: trim(ti.SerialNumber),
			MinPinLen: ti.MinPinLen, MaxPinLen: ti.MaxPinLen, Flags: ti.Flags,
		}
	}
	switch len(found) {
	case 0:
		return 0, tokenInfo{}, fmt.Errorf("hsm/pkcs11: no initialized token matches %s: %w", sel.TokenURI(), ErrTokenUnavailable)
	case 1:
		return found[0], info, nil
	}
	return 0, tokenInfo{}, fmt.Errorf("hsm/pkcs11: %d tokens match %s; add serial= or token= to the URI", len(found), sel.TokenURI())
}

func trim(s string) string { return strings.TrimRight(s, " \x00") }

func matches(want, have string) bool { return want == "" || want == trim(have) }

// isCode reports whether err is (or wraps) the PKCS#11 return value code.
func isCode(err error, code uint) bool {
	var e p11.Error
	return errors.As(err, &e) && uint(e) == code
}

// goneCodes are return values after which the token, its sessions or its
// login state cannot be trusted any more: the device was removed or
// restarted. The partition then seals itself and waits for a new quorum.
var goneCodes = []uint{
	p11.CKR_DEVICE_REMOVED, p11.CKR_DEVICE_ERROR, p11.CKR_TOKEN_NOT_PRESENT,
	p11.CKR_TOKEN_NOT_RECOGNIZED, p11.CKR_SESSION_HANDLE_INVALID, p11.CKR_SESSION_CLOSED,
	p11.CKR_SESSION_COUNT, p11.CKR_USER_NOT_LOGGED_IN, p11.CKR_CRYPTOKI_NOT_INITIALIZED,
	p11.CKR_SLOT_ID_INVALID, p11.CKR_KEY_HANDLE_INVALID, p11.CKR_OBJECT_HANDLE_INVALID,
	p11.CKR_GENERAL_ERROR,
}

// tokenGone reports whether err says the token went away.
func tokenGone(err error) bool {
	var e p11.Error
	if !errors.As(err, &e) {
		return false
	}
	for _, c := range goneCodes {
		if uint(e) == c {
			return true
		}
	}
	return false
}

// pinString views pin as a string without copying it, so that wiping pin
// also wipes what the string shows. The string must not outlive the wipe.
func pinString(pin []byte) string {
	if len(pin) == 0 {
		return ""
	}
	return unsafe.String(&pin[0], len(pin))
}

// changePIN logs in to the token in slot with oldPIN, sets newPIN, logs
// out, and checks that oldPIN is refused and newPIN accepted.
// changed reports whether C_SetPIN succeeded: from then on newPIN may be
// the only PIN the token takes, even if a later check fails.
func (l *library) changePIN(slot uint, oldPIN, newPIN []byte) (changed bool, err error) {
	sh, err := l.raw.OpenSession(slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
	if err != nil {
		return false, fmt.Errorf("hsm/pkcs11: open session: %w", err)
	}
	defer l.raw.CloseSession(sh)
	if err := l.raw.Login(sh, p11.CKU_USER, pinString(oldPIN)); err != nil && !isCode(err, p11.CKR_USER_ALREADY_LOGGED_IN) {
		if isCode(err, p11.CKR_PIN_INCORRECT) {
			return false, errors.New("hsm/pkcs11: log in with the current user PIN: the token refused the PIN (CKR_PIN_INCORRECT)")
		}
		return false, fmt.Errorf("hsm/pkcs11: log in with the current user PIN: %w", err)
	}
	if err := l.raw.SetPIN(sh, pinString(oldPIN), pinString(newPIN)); err != nil {
		_ = l.raw.Logout(sh)
		return false, fmt.Errorf("hsm/pkcs11: change the user PIN (C_SetPIN): %w", err)
	}
	if err := l.raw.Logout(sh); err != nil {
		return true, fmt.Errorf("hsm/pkcs11: log out after changing the PIN: %w", err)
	}
	if err := l.raw.Login(sh, p11.CKU_USER, pinString(oldPIN)); err == nil {
		_ = l.raw.Logout(sh)
		return true, errors.New("hsm/pkcs11: the token still accepts the old PIN after C_SetPIN")
	}
	if err := l.raw.Login(sh, p11.CKU_USER, pinString(newPIN)); err != nil {
		return true, fmt.Errorf("hsm/pkcs11: the token refuses the new PIN after C_SetPIN: %w", err)
	}
	return true, l.raw.Logout(sh)
}

// setPINLoggedIn changes the PIN of a token this process is logged in to
// (used by Reshare).
func (l *library) setPINLoggedIn(slot uint, oldPIN, newPIN []byte) error {
	sh, err := l.raw.OpenSession(slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
	if err != nil {
		return fmt.Errorf("hsm/pkcs11: open session: %w", err)
	}
	defer l.raw.CloseSession(sh)
	if err := l.raw.SetPIN(sh, pinString(oldPIN), pinString(newPIN)); err != nil {
		return fmt.Errorf("hsm/pkcs11: change the user PIN (C_SetPIN): %w", err)
	}
	return nil
}

// logoutAll logs this process out of the token in slot and closes all its
// sessions there (C_Logout, C_CloseAllSessions). Errors are ignored: the
// token may be gone, and then nothing is logged in anyway.
func (l *library) logoutAll(slot uint) {
	if sh, err := l.raw.OpenSession(slot, p11.CKF_SERIAL_SESSION); err == nil {
		_ = l.raw.Logout(sh)
		_ = l.raw.CloseSession(sh)
	}
	_ = l.raw.CloseAllSessions(slot)
}

// locate finds the slot of a token by URI with the loaded library.
func (l *library) locate(sel *URI) (uint, tokenInfo, error) {
	return findToken(l.raw, sel)
}
