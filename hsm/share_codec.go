package hsm

import (
	"bytes"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strconv"
	"strings"
	"unicode"

	"filippo.io/age"
	"filippo.io/age/armor"
)

// The text form of a share, as printed for a custodian:
//
//	hsmca share v1
//	module: 5f0c8e1a9b2d4c6e8f10a2b4c6d8e0f1
//	partition: issuing
//	generation: 1
//	share: 2
//	threshold: 3
//	custodian: alice
//	value: BMYFK 6U7YT UQ4M2 YPWRM P3ARG ZNYBJ
//	value: OK54K DSXUD VDG7E FZ4MG DA
//	check: 5LBKV 2Q
//
// Field names and the value and check characters are case-insensitive;
// spaces and dashes inside the value and the check are ignored; blank lines
// and lines starting with '#' are ignored. The check is a CRC-32C over the
// canonical form of every other line, so any single changed character and
// any swap of two neighbouring characters is caught (CRC-32 detects every
// error burst of up to 32 bits), before the share is used for anything.
const textMagic = "hsmca share v1"

// Limits on share text, so that a hostile input cannot make decoding costly.
const (
	maxShareText  = 64 << 10
	maxShareValue = 1024
	maxFieldLen   = 256
	maxShareLines = 200
)

var (
	b32      = base32.StdEncoding.WithPadding(base32.NoPadding)
	crcTable = crc32.MakeTable(crc32.Castagnoli)
)

// EncodeText returns the share as text a person can print and type back.
// Control characters in the module, partition and custodian names are
// replaced by '_' and surrounding spaces trimmed, as DecodeText would read
// them.
func EncodeText(s Share) string {
	s.Module, s.Partition, s.Custodian = cleanField(s.Module), cleanField(s.Partition), cleanField(s.Custodian)
	v := b32.EncodeToString(s.Value)
	var b strings.Builder
	b.WriteString(textMagic + "\n")
	fmt.Fprintf(&b, "module: %s\npartition: %s\ngeneration: %d\nshare: %d\nthreshold: %d\n",
		s.Module, s.Partition, s.Generation, s.Index, s.Threshold)
	if s.Custodian != "" {
		fmt.Fprintf(&b, "custodian: %s\n", s.Custodian)
	}
	const perLine = 30 // six groups of five
	for len(v) > 0 {
		n := min(perLine, len(v))
		b.WriteString("value: " + groups(v[:n]) + "\n")
		v = v[n:]
	}
	b.WriteString("check: " + groups(checksum(s, b32.EncodeToString(s.Value))) + "\n")
	return b.String()
}

func cleanField(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == unicode.ReplacementChar {
			return '_'
		}
		return r
	}, s)
	return strings.TrimSpace(s)
}

func groups(s string) string {
	var b strings.Builder
	for i, r := range s {
		if i > 0 && i%5 == 0 {
			b.WriteByte(' ')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// checksum is the CRC-32C, in base32, of the canonical form of every field
// but the value's bytes, for which it takes the value's base32 text as
// written (upper case, no spaces).
func checksum(s Share, value string) string {
	canon := fmt.Appendf(nil, "%s\nmodule:%s\npartition:%s\ngeneration:%d\nshare:%d\nthreshold:%d\ncustodian:%s\nvalue:%s\n",
		textMagic, s.Module, s.Partition, s.Generation, s.Index, s.Threshold, s.Custodian, value)
	return b32.EncodeToString(binary.BigEndian.AppendUint32(nil, crc32.Checksum(canon, crcTable)))
}

// DecodeText parses a share written by EncodeText. It verifies the checksum
// before it returns anything; every refusal is a *ShareError naming the
// share's index when the text gives one.
func DecodeText(text string) (Share, error) {
	var s Share
	fail := func(format string, a ...any) (Share, error) {
		return Share{}, &ShareError{Index: s.Index, Reason: fmt.Sprintf(format, a...)}
	}
	if len(text) > maxShareText {
		return fail("share text longer than %d bytes", maxShareText)
	}
	lines := strings.Split(text, "\n")
	if len(lines) > maxShareLines {
		return fail("share text has more than %d lines", maxShareLines)
	}
	seen := map[string]bool{}
	var value, check strings.Builder
	var magic bool
	for n, line := range lines {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if !magic {
			if !strings.EqualFold(strings.Join(strings.Fields(line), " "), textMagic) {
				return fail("not an hsmca share (line %d should read %q)", n+1, textMagic)
			}
			magic = true
			continue
		}
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			return fail("line %d: want \"name: value\"", n+1)
		}
		key, val = strings.ToLower(strings.TrimSpace(key)), strings.TrimSpace(val)
		if len(val) > maxFieldLen {
			return fail("line %d: %s is too long", n+1, key)
		}
		if key != "value" && seen[key] {
			return fail("line %d: %s given twice", n+1, key)
		}
		seen[key] = true
		var err error
		switch key {
		case "module":
			s.Module = val
		case "partition":
			s.Partition = val
		case "custodian":
			s.Custodian = val
		case "generation":
			s.Generation, err = parseSmall(val)
		case "share":
			s.Index, err = parseSmall(val)
		case "threshold":
			s.Threshold, err = parseSmall(val)
		case "value":
			if check.Len() > 0 {
				return fail("line %d: value after the check", n+1)
			}
			value.WriteString(compact(val))
		case "check":
			check.WriteString(compact(val))
		default:
			return fail("line %d: unknown field %q", n+1, key)
		}
		if err != nil {
			return fail("line %d: %s: %v", n+1, key, err)
		}
		for _, r := range val {
			if unicode.IsControl(r) || r == unicode.ReplacementChar {
				return fail("line %d: %s holds a control or invalid character", n+1, key)
			}
		}
	}
	if !magic {
		return fail("not an hsmca share (no %q line)", textMagic)
	}
	for _, k := range []string{"module", "partition", "generation", "share", "threshold", "value", "check"} {
		if !seen[k] {
			return fail("missing %s line", k)
		}
	}
	// The checksum covers the value as written, so it is checked before
	// the value is decoded or any field is interpreted.
	v := value.String()
	if len(v) > b32.EncodedLen(maxShareValue) {
		return fail("value longer than %d bytes", maxShareValue)
	}
	if check.String() != checksum(s, v) {
		return fail("checksum mismatch: a character was changed or two were swapped; compare every line with the printed share")
	}
	var err error
	if s.Value, err = b32.DecodeString(v); err != nil {
		return fail("value is not valid base32")
	}
	switch {
	case s.Module == "" || s.Partition == "":
		return fail("module and partition must not be empty")
	case s.Generation < 1:
		return fail("generation must be at least 1")
	case s.Index < 1 || s.Threshold < 1:
		return fail("share number and threshold must be at least 1")
	case len(s.Value) == 0:
		return fail("value is empty")
	}
	return s, nil
}

// compact upper-cases and drops spaces and dashes.
func compact(s string) string {
	return strings.Map(func(r rune) rune {
		if r == ' ' || r == '-' || r == '\t' {
			return -1
		}
		return unicode.ToUpper(r)
	}, s)
}

func parseSmall(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 1<<20 {
		return 0, errors.New("not a small number")
	}
	return n, nil
}

// EncodeAge encrypts the share's text form to one custodian's age recipient
// ("age1..."), ASCII-armored so that it can be mailed or printed.
func EncodeAge(s Share, recipient string) ([]byte, error) {
	rs, err := age.ParseRecipients(strings.NewReader(recipient))
	if err != nil {
		return nil, fmt.Errorf("hsm: age recipient: %w", err)
	}
	if len(rs) != 1 {
		return nil, fmt.Errorf("hsm: want exactly one age recipient, got %d", len(rs))
	}
	var buf bytes.Buffer
	aw := armor.NewWriter(&buf)
	w, err := age.Encrypt(aw, rs[0])
	if err != nil {
		return nil, fmt.Errorf("hsm: encrypt share: %w", err)
	}
	if _, err := io.WriteString(w, EncodeText(s)); err != nil {
		return nil, fmt.Errorf("hsm: encrypt share: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("hsm: encrypt share: %w", err)
	}
	if err := aw.Close(); err != nil {
		return nil, fmt.Errorf("hsm: encrypt share: %w", err)
	}
	return buf.Bytes(), nil
}

// DecodeAge decrypts an age-encrypted share (armored or binary) with the
// custodian's identities and decodes its text.
func DecodeAge(data []byte, identities ...age.Identity) (Share, error) {
	if len(identities) == 0 {
		return Share{}, errors.New("hsm: the share is age-encrypted: an identity is needed to decrypt it")
	}
	if len(data) > maxShareText {
		return Share{}, &ShareError{Reason: fmt.Sprintf("encrypted share longer than %d bytes", maxShareText)}
	}
	var src io.Reader = bytes.NewReader(data)
	if isArmored(data) {
		src = armor.NewReader(bytes.NewReader(bytes.TrimLeft(data, " \t\r\n")))
	}
	r, err := age.Decrypt(src, identities...)
	if err != nil {
		return Share{}, fmt.Errorf("hsm: decrypt share: %w", err)
	}
	plain, err := io.ReadAll(io.LimitReader(r, maxShareText+1))
	if err != nil {
		return Share{}, fmt.Errorf("hsm: decrypt share: %w", err)
	}
	return DecodeText(string(plain))
}

func isArmored(data []byte) bool {
	return bytes.HasPrefix(bytes.TrimLeft(data, " \t\r\n"), []byte(armor.Header))
}

func isAge(data []byte) bool {
	return isArmored(data) || bytes.HasPrefix(data, []byte("age-encryption.org/"))
}

// DecodeShareFile decodes a share file in either form: age-encrypted
// (armored or binary; identities needed) or plain text.
func DecodeShareFile(data []byte, identities ...age.Identity) (Share, error) {
	if isAge(data) {
		return DecodeAge(data, identities...)
	}
	return DecodeText(string(data))
}
