package pkcs11

import (
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"unicode/utf8"
)

// URI is a parsed RFC 7512 "pkcs11:" URI. It names a PKCS#11 library, a
// token (a partition, in hsmca's terms) and optionally one object on it.
//
// Path attributes (RFC 7512 section 2.3) select; query attributes say how to
// reach the token (module-path) and where its PIN comes from (pin-source).
// An attribute left empty does not constrain the match, so "token=" and no
// token attribute at all are the same URI. pin-value is refused by Parse:
// hsmca keeps secrets out of URIs, which end up in configuration files,
// process listings and logs.
type URI struct {
	// Token attributes (CK_TOKEN_INFO).
	Token        string // token label
	Manufacturer string
	Serial       string
	Model        string

	// Library attributes (CK_INFO).
	LibraryManufacturer string
	LibraryDescription  string
	LibraryVersion      string // "M" or "M.N"

	// Slot attributes (CK_SLOT_INFO).
	SlotDescription  string
	SlotManufacturer string
	SlotID           *uint64 // nil when absent (slot 0 is a valid slot)

	// Object attributes.
	Object string // CKA_LABEL
	Type   string // public, private, cert, secret-key or data
	ID     []byte // CKA_ID, raw bytes

	// Query attributes.
	ModulePath string // absolute path of the PKCS#11 library
	ModuleName string // library name without path or suffix
	PinSource  string // where the PIN is read from, e.g. "file:/etc/hsmca/pin"

	// Vendor holds "x-" attributes in the order they appeared, path ones
	// first; hsmca ignores them but keeps them for String.
	Vendor []VendorAttr
}

// VendorAttr is one vendor-specific ("x-" prefixed) attribute.
type VendorAttr struct {
	Query bool // in the query component rather than the path
	Name  string
	Value string
}

const uriScheme = "pkcs11:"

// maxURILen bounds what Parse accepts; real URIs are a few hundred bytes.
const maxURILen = 8192

// objectTypes are the values RFC 7512 section 2.3 allows for "type".
var objectTypes = map[string]bool{"public": true, "private": true, "cert": true, "secret-key": true, "data": true}

// ParseURI parses a "pkcs11:" URI (RFC 7512). The scheme is case-insensitive;
// attribute names are not. It rejects unknown non-vendor attributes, an
// attribute given twice, malformed percent-encoding, non-UTF-8 text values
// and pin-value (see URI).
func ParseURI(s string) (*URI, error) {
	if len(s) > maxURILen {
		return nil, fmt.Errorf("hsm/pkcs11: URI is %d bytes long, more than the %d accepted", len(s), maxURILen)
	}
	if len(s) < len(uriScheme) || !strings.EqualFold(s[:len(uriScheme)], uriScheme) {
		return nil, errors.New(`hsm/pkcs11: URI must start with "pkcs11:"`)
	}
	rest := s[len(uriScheme):]
	if i := strings.IndexByte(rest, '#'); i >= 0 {
		return nil, errors.New("hsm/pkcs11: URI must not have a fragment (#)")
	}
	path, query, hasQuery := strings.Cut(rest, "?")
	u := &URI{}
	seen := map[string]bool{}
	if path != "" {
		for _, attr := range strings.Split(path, ";") {
			if err := u.setPathAttr(attr, seen); err != nil {
				return nil, err
			}
		}
	}
	if hasQuery && query != "" {
		for _, attr := range strings.Split(query, "&") {
			if err := u.setQueryAttr(attr, seen); err != nil {
				return nil, err
			}
		}
	}
	return u, nil
}

func splitAttr(attr string) (name, value string, err error) {
	name, value, ok := strings.Cut(attr, "=")
	if !ok || name == "" {
		return "", "", fmt.Errorf("hsm/pkcs11: URI attribute %q is not name=value", truncate(attr))
	}
	return name, value, nil
}

func (u *URI) setPathAttr(attr string, seen map[string]bool) error {
	name, raw, err := splitAttr(attr)
	if err != nil {
		return err
	}
	if !isVendorName(name) {
		if seen[name] {
			return fmt.Errorf("hsm/pkcs11: URI attribute %q appears twice", name)
		}
		seen[name] = true
	}
	if err := checkChars(raw, false); err != nil {
		return fmt.Errorf("hsm/pkcs11: URI attribute %q: %w", name, err)
	}
	b, err := unescape(raw)
	if err != nil {
		return fmt.Errorf("hsm/pkcs11: URI attribute %q: %w", name, err)
	}
	if name == "id" {
		u.ID = b
		if len(b) == 0 {
			u.ID = nil
		}
		return nil
	}
	if !utf8.Valid(b) {
		return fmt.Errorf("hsm/pkcs11: URI attribute %q is not valid UTF-8", name)
	}
	v := string(b)
	switch name {
	case "token":
		u.Token = v
	case "manufacturer":
		u.Manufacturer = v
	case "serial":
		u.Serial = v
	case "model":
		u.Model = v
	case "library-manufacturer":
		u.LibraryManufacturer = v
	case "library-description":
		u.LibraryDescription = v
	case "library-version":
		if v != "" && !validVersion(v) {
			return fmt.Errorf("hsm/pkcs11: URI attribute library-version %q is not M or M.N", truncate(v))
		}
		u.LibraryVersion = v
	case "slot-description":
		u.SlotDescription = v
	case "slot-manufacturer":
		u.SlotManufacturer = v
	case "slot-id":
		if v == "" {
			return nil
		}
		if strings.TrimLeft(v, "0123456789") != "" {
			return fmt.Errorf("hsm/pkcs11: URI attribute slot-id %q is not a decimal number", truncate(v))
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return fmt.Errorf("hsm/pkcs11: URI attribute slot-id %q is out of range", truncate(v))
		}
		u.SlotID = &n
	case "object":
		u.Object = v
	case "type":
		if v != "" && !objectTypes[v] {
			return fmt.Errorf("hsm/pkcs11: URI attribute type %q is not public, private, cert, secret-key or data", truncate(v))
		}
		u.Type = v
	default:
		if !isVendorName(name) {
			return fmt.Errorf("hsm/pkcs11: unknown URI path attribute %q (vendor attributes start with x-)", truncate(name))
		}
		u.Vendor = append(u.Vendor, VendorAttr{Name: name, Value: v})
	}
	return nil
}

func (u *URI) setQueryAttr(attr string, seen map[string]bool) error {
	name, raw, err := splitAttr(attr)
	if err != nil {
		return err
	}
	if name == "pin-value" {
		return errors.New("hsm/pkcs11: pin-value in a pkcs11: URI is refused: a PIN does not belong in a URI; use pin-source=file:/path/to/pin-file (mode 0600)")
	}
	if !isVendorName(name) {
		if seen["?"+name] {
			return fmt.Errorf("hsm/pkcs11: URI attribute %q appears twice", name)
		}
		seen["?"+name] = true
	}
	if err := checkChars(raw, true); err != nil {
		return fmt.Errorf("hsm/pkcs11: URI attribute %q: %w", name, err)
	}
	b, err := unescape(raw)
	if err != nil {
		return fmt.Errorf("hsm/pkcs11: URI attribute %q: %w", name, err)
	}
	if !utf8.Valid(b) {
		return fmt.Errorf("hsm/pkcs11: URI attribute %q is not valid UTF-8", name)
	}
	v := string(b)
	switch name {
	case "module-path":
		u.ModulePath = v
	case "module-name":
		u.ModuleName = v
	case "pin-source":
		u.PinSource = v
	default:
		if !isVendorName(name) {
			return fmt.Errorf("hsm/pkcs11: unknown URI query attribute %q (vendor attributes start with x-)", truncate(name))
		}
		u.Vendor = append(u.Vendor, VendorAttr{Query: true, Name: name, Value: v})
	}
	return nil
}

// isVendorName reports whether name is a vendor-specific attribute name
// (RFC 7512: "x-" followed by ALPHA / DIGIT / "-" / "_").
func isVendorName(name string) bool {
	if len(name) <= 2 || !strings.HasPrefix(name, "x-") {
		return false
	}
	for i := 2; i < len(name); i++ {
		c := name[i]
		if !(isAlnum(c) || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func validVersion(v string) bool {
	major, minor, hasMinor := strings.Cut(v, ".")
	digits := func(s string) bool { return s != "" && strings.TrimLeft(s, "0123456789") == "" }
	return digits(major) && (!hasMinor || digits(minor))
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func isUnreserved(c byte) bool {
	return isAlnum(c) || c == '-' || c == '.' || c == '_' || c == '~'
}

// isPathChar is RFC 7512 pk11-pchar minus pct-encoded.
func isPathChar(c byte) bool {
	return isUnreserved(c) || strings.IndexByte(":[]@!$'()*+,=", c) >= 0
}

// isQueryChar is RFC 7512 pk11-qchar minus pct-encoded.
func isQueryChar(c byte) bool {
	return isPathChar(c) || c == '/' || c == '?' || c == '|'
}

// checkChars refuses a character that must be percent-encoded in the
// component. '=' is allowed in values by the grammar.
func checkChars(v string, query bool) error {
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == '%' {
			continue
		}
		ok := isPathChar(c)
		if query {
			ok = isQueryChar(c)
		}
		if !ok {
			return fmt.Errorf("character %q must be percent-encoded", c)
		}
	}
	return nil
}

// unescape decodes %XX sequences (hex digits in either case).
func unescape(v string) ([]byte, error) {
	out := make([]byte, 0, len(v))
	for i := 0; i < len(v); i++ {
		if v[i] != '%' {
			out = append(out, v[i])
			continue
		}
		if i+2 >= len(v) {
			return nil, errors.New("truncated percent-encoding")
		}
		h, okh := unhex(v[i+1])
		l, okl := unhex(v[i+2])
		if !okh || !okl {
			return nil, fmt.Errorf("bad percent-encoding %q", v[i:i+3])
		}
		out = append(out, h<<4|l)
		i += 2
	}
	return out, nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// escape percent-encodes every byte that is not allowed literally. It
// always encodes '%' and, to stay readable, leaves the allowed characters
// alone.
func escape(b []byte, query bool) string {
	const hexdig = "0123456789ABCDEF"
	var sb strings.Builder
	for _, c := range b {
		ok := isPathChar(c)
		if query {
			ok = isQueryChar(c)
		}
		if ok {
			sb.WriteByte(c)
			continue
		}
		sb.WriteByte('%')
		sb.WriteByte(hexdig[c>>4])
		sb.WriteByte(hexdig[c&15])
	}
	return sb.String()
}

// escapeID encodes every byte of an ID, as p11-kit and pkcs11-tool print it.
func escapeID(b []byte) string {
	const hexdig = "0123456789abcdef"
	var sb strings.Builder
	for _, c := range b {
		sb.WriteByte('%')
		sb.WriteByte(hexdig[c>>4])
		sb.WriteByte(hexdig[c&15])
	}
	return sb.String()
}

// String formats u in a canonical order: path attributes as in RFC 7512's
// grammar, then query attributes. ParseURI(u.String()) equals u.
func (u *URI) String() string {
	var path, query []string
	add := func(name, v string) {
		if v != "" {
			path = append(path, name+"="+escape([]byte(v), false))
		}
	}
	add("library-manufacturer", u.LibraryManufacturer)
	add("library-description", u.LibraryDescription)
	add("library-version", u.LibraryVersion)
	add("slot-manufacturer", u.SlotManufacturer)
	add("slot-description", u.SlotDescription)
	if u.SlotID != nil {
		path = append(path, "slot-id="+strconv.FormatUint(*u.SlotID, 10))
	}
	add("manufacturer", u.Manufacturer)
	add("model", u.Model)
	add("serial", u.Serial)
	add("token", u.Token)
	if len(u.ID) > 0 {
		path = append(path, "id="+escapeID(u.ID))
	}
	add("object", u.Object)
	add("type", u.Type)
	addq := func(name, v string) {
		if v != "" {
			query = append(query, name+"="+escape([]byte(v), true))
		}
	}
	addq("module-name", u.ModuleName)
	addq("module-path", u.ModulePath)
	addq("pin-source", u.PinSource)
	for _, va := range u.Vendor {
		if va.Query {
			query = append(query, va.Name+"="+escape([]byte(va.Value), true))
		} else {
			path = append(path, va.Name+"="+escape([]byte(va.Value), false))
		}
	}
	s := uriScheme + strings.Join(path, ";")
	if len(query) > 0 {
		s += "?" + strings.Join(query, "&")
	}
	return s
}

// TokenURI returns a copy of u with the object attributes (object, id,
// type) and pin-source removed: the part that names the token.
func (u *URI) TokenURI() *URI {
	c := *u
	c.Object, c.ID, c.Type, c.PinSource = "", nil, "", ""
	c.Vendor = append([]VendorAttr(nil), u.Vendor...)
	return &c
}

// PinFile returns the file that pin-source names. RFC 7512 section 2.3
// leaves the form to the application; hsmca accepts "file:/abs/path",
// "file:///abs/path", "file://localhost/abs/path" and a bare path, and
// refuses anything else (in particular "|program", which would run a
// command). It returns "" when pin-source is absent.
func (u *URI) PinFile() (string, error) {
	return pinFile(u.PinSource)
}

func pinFile(src string) (string, error) {
	switch {
	case src == "":
		return "", nil
	case strings.HasPrefix(src, "|"):
		return "", errors.New("hsm/pkcs11: pin-source naming a program (|...) is not supported; use pin-source=file:/path")
	case strings.HasPrefix(src, "file:"):
		fu, err := url.Parse(src)
		if err != nil {
			return "", fmt.Errorf("hsm/pkcs11: pin-source %q is not a valid file: URI", truncate(src))
		}
		if fu.Host != "" && fu.Host != "localhost" {
			return "", fmt.Errorf("hsm/pkcs11: pin-source file: URI names host %q; only local files are read", fu.Host)
		}
		p := fu.Path
		if p == "" {
			p = fu.Opaque // "file:relative/path"
		}
		if p == "" {
			return "", errors.New("hsm/pkcs11: pin-source file: URI has no path")
		}
		return filepath.FromSlash(p), nil
	case strings.Contains(src, ":") && !strings.HasPrefix(src, "/") && !strings.HasPrefix(src, "."):
		scheme, _, _ := strings.Cut(src, ":")
		return "", fmt.Errorf("hsm/pkcs11: pin-source scheme %q is not supported; use pin-source=file:/path", truncate(scheme))
	}
	return src, nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
