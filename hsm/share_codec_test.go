package hsm

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"

	"filippo.io/age"
)

func testShare() Share {
	v := make([]byte, 32)
	for i := range v {
		v[i] = byte(i*37 + 11)
	}
	return Share{Module: "5f0c8e1a9b2d4c6e8f10a2b4c6d8e0f1", Partition: "issuing", Generation: 1, Index: 2, Threshold: 3, Custodian: "alice", Value: v}
}

func TestTextRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		s    Share
		edit func(string) string
	}{
		{"as encoded", testShare(), nil},
		{"no custodian", func() Share { s := testShare(); s.Custodian = ""; return s }(), nil},
		{"long value", func() Share { s := testShare(); s.Value = bytes.Repeat([]byte{0xa5}, 100); return s }(), nil},
		{"typed in lower case with dashes", testShare(), func(s string) string {
			out := []string{}
			for _, l := range strings.Split(s, "\n") {
				if strings.HasPrefix(l, "value:") || strings.HasPrefix(l, "check:") {
					l = strings.ToLower(strings.ReplaceAll(l, " ", "-"))
					l = strings.Replace(l, "-", " ", 1)
				}
				out = append(out, l)
			}
			return strings.Join(out, "\n")
		}},
		{"comments, blank lines, CRLF", testShare(), func(s string) string {
			return "# printed 2026-01-02\r\n\r\n" + strings.ReplaceAll(s, "\n", "\r\n") + "\r\n# end\r\n"
		}},
		{"upper-case field names", testShare(), func(s string) string {
			return strings.Replace(strings.Replace(s, "module:", "MODULE:", 1), "share:", "Share:", 1)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			text := EncodeText(tc.s)
			if tc.edit != nil {
				text = tc.edit(text)
			}
			got, err := DecodeText(text)
			if err != nil {
				t.Fatalf("decode:\n%s\n%v", text, err)
			}
			if !reflect.DeepEqual(got, tc.s) {
				t.Fatalf("got %+v, want %+v", got, tc.s)
			}
		})
	}
}

// Every single changed character and every swap of two neighbouring,
// different characters is refused, and the error names share 2 whenever the
// share line itself is intact.
func TestTextCatchesEveryTypo(t *testing.T) {
	text := EncodeText(testShare())
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567abcdefghijklmnopqrstuvwxyz0189:"
	isSame := func(a, b byte) bool { return strings.EqualFold(string(a), string(b)) }
	check := func(t *testing.T, mutated string) {
		t.Helper()
		_, err := DecodeText(mutated)
		if err == nil {
			t.Fatalf("accepted a mistyped share:\n%s", mutated)
		}
		var serr *ShareError
		if !errors.As(err, &serr) {
			t.Fatalf("error %v is not a *ShareError", err)
		}
	}
	var tried int
	for i := 0; i < len(text); i++ {
		c := text[i]
		if c == ' ' || c == '\n' {
			continue
		}
		for j := 0; j < len(alphabet); j++ {
			if isSame(alphabet[j], c) {
				continue
			}
			// Lower-case letters in the value and check lines are the
			// same character; in names and field keys they differ.
			mutated := text[:i] + string(alphabet[j]) + text[i+1:]
			if mutated == text {
				continue
			}
			if _, err := DecodeText(mutated); err == nil {
				// Only field-name case changes may decode.
				if s := strings.ToLower(mutated); s == strings.ToLower(text) {
					continue
				}
			}
			check(t, mutated)
			tried++
		}
		if i+1 < len(text) && text[i+1] != ' ' && text[i+1] != '\n' && !isSame(c, text[i+1]) {
			swapped := text[:i] + string(text[i+1]) + string(c) + text[i+2:]
			check(t, swapped)
			tried++
		}
	}
	if tried < 1000 {
		t.Fatalf("only %d mutations tried", tried)
	}
	// A typo in the value names the share.
	lines := strings.Split(text, "\n")
	for n, l := range lines {
		if strings.HasPrefix(l, "value:") {
			b := []byte(l)
			b[10] = map[bool]byte{true: 'B', false: 'A'}[b[10] == 'A']
			lines[n] = string(b)
			break
		}
	}
	_, err := DecodeText(strings.Join(lines, "\n"))
	var serr *ShareError
	if !errors.As(err, &serr) || serr.Index != 2 || !strings.Contains(serr.Reason, "checksum") {
		t.Fatalf("typo in value: %v", err)
	}
}

func TestTextRejectsMalformed(t *testing.T) {
	good := EncodeText(testShare())
	tests := []struct {
		name, text, want string
	}{
		{"empty", "", "not an hsmca share"},
		{"other document", "hello\nworld\n", "not an hsmca share"},
		{"missing check", strings.Join(strings.Split(good, "\n")[:9], "\n"), "missing check"},
		{"unknown field", strings.Replace(good, "custodian:", "custodain:", 1), "unknown field"},
		{"duplicate field", strings.Replace(good, "custodian: alice", "share: 2", 1), "given twice"},
		{"no colon", strings.Replace(good, "threshold: 3", "threshold 3", 1), "name: value"},
		{"huge", textMagic + "\n" + strings.Repeat("# x\n", maxShareText/4+1), "longer than"},
		{"control character", strings.Replace(good, "alice", "al\x07ce", 1), "control"},
		{"negative number", strings.Replace(good, "generation: 1", "generation: -1", 1), "small number"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeText(tc.text)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestAgeRoundTrip(t *testing.T) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	other, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	s := testShare()
	enc, err := EncodeAge(s, id.Recipient().String())
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(enc, []byte(s.Module)) || bytes.Contains(enc, []byte("hsmca share")) {
		t.Fatal("encrypted share contains plaintext")
	}
	got, err := DecodeShareFile(enc, other, id)
	if err != nil || !reflect.DeepEqual(got, s) {
		t.Fatalf("decode: %+v, %v", got, err)
	}
	if _, err := DecodeShareFile(enc, other); err == nil {
		t.Fatal("decrypted with the wrong identity")
	}
	if _, err := DecodeShareFile(enc); err == nil || !strings.Contains(err.Error(), "identity") {
		t.Fatalf("no identity: %v", err)
	}
	// Plain text goes through the same entry point.
	if got, err := DecodeShareFile([]byte(EncodeText(s))); err != nil || !reflect.DeepEqual(got, s) {
		t.Fatalf("plain: %+v, %v", got, err)
	}
	for _, bad := range []string{"", "age1xyz", "ssh-ed25519 AAAA", id.Recipient().String() + "\n" + other.Recipient().String()} {
		if _, err := EncodeAge(s, bad); err == nil {
			t.Fatalf("EncodeAge accepted recipient %q", bad)
		}
	}
}

func FuzzDecodeText(f *testing.F) {
	good := EncodeText(testShare())
	f.Add(good)
	f.Add(strings.Replace(good, "share: 2", "share: 3", 1))
	f.Add(textMagic + "\nmodule: m\n")
	f.Add("")
	f.Add("# only a comment\n")
	f.Fuzz(func(t *testing.T, text string) {
		s, err := DecodeText(text)
		if err != nil {
			var serr *ShareError
			if !errors.As(err, &serr) {
				t.Fatalf("error %v is not a *ShareError", err)
			}
			return
		}
		// Whatever decodes re-encodes to the same share.
		again, err := DecodeText(EncodeText(s))
		if err != nil || !reflect.DeepEqual(again, s) {
			t.Fatalf("re-encoding %+v: %+v, %v", s, again, err)
		}
	})
}

func FuzzDecodeShareFile(f *testing.F) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		f.Fatal(err)
	}
	enc, err := EncodeAge(testShare(), id.Recipient().String())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(enc)
	f.Add(enc[:len(enc)/2])
	f.Add([]byte("age-encryption.org/v1\n-> X25519 abc\n"))
	f.Add([]byte(EncodeText(testShare())))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = DecodeShareFile(data, id)
	})
}
