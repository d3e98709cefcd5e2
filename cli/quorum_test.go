package cli

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
)

func TestParseCustodian(t *testing.T) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	rcpt := id.Recipient().String()
	for _, tc := range []struct {
		name, in string
		want     custodian
		wantErr  string
	}{
		{name: "name only", in: "alice", want: custodian{Name: "alice"}},
		{name: "with recipient", in: "bob=" + rcpt, want: custodian{Name: "bob", Recipient: rcpt}},
		{name: "dots and dashes", in: "c.d-e_f", want: custodian{Name: "c.d-e_f"}},
		{name: "empty", in: "", wantErr: "invalid custodian name"},
		{name: "path", in: "../alice", wantErr: "invalid custodian name"},
		{name: "slash", in: "a/b=" + rcpt, wantErr: "invalid custodian name"},
		{name: "hidden file", in: ".alice", wantErr: "invalid custodian name"},
		{name: "flag-like", in: "-alice", wantErr: "invalid custodian name"},
		{name: "too long", in: strings.Repeat("a", 65), wantErr: "invalid custodian name"},
		{name: "empty recipient", in: "alice=", wantErr: "empty age recipient"},
		{name: "bad recipient", in: "alice=age1notakey", wantErr: "invalid age recipient"},
		{name: "two recipients", in: "alice=" + rcpt + "\n" + rcpt, wantErr: "invalid age recipient"},
		{name: "secret key as recipient", in: "alice=" + id.String(), wantErr: "invalid age recipient"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseCustodian(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parseCustodian(%q) = %+v, %v; want error %q", tc.in, got, err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "AGE-SECRET-KEY") {
					t.Fatalf("error quotes a secret key: %v", err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("parseCustodian(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestShareSetValidate(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		f       shareSetFlags
		wantErr string
		names   []string
	}{
		{name: "plain", f: shareSetFlags{shares: 3, threshold: 2, out: dir}, names: []string{"share-1.txt", "share-2.txt", "share-3.txt"}},
		{name: "named", f: shareSetFlags{shares: 2, threshold: 2, out: dir, custodians: []string{"alice", "bob"}}, names: []string{"alice.txt", "bob.txt"}},
		{name: "1 of 1", f: shareSetFlags{shares: 1, threshold: 1, out: dir}, names: []string{"share-1.txt"}},
		{name: "M > N", f: shareSetFlags{shares: 2, threshold: 3, out: dir}, wantErr: "could never be activated"},
		{name: "M = 0", f: shareSetFlags{shares: 2, threshold: 0, out: dir}, wantErr: "--threshold"},
		{name: "N too big", f: shareSetFlags{shares: 256, threshold: 2, out: dir}, wantErr: "--shares"},
		{name: "no out", f: shareSetFlags{shares: 2, threshold: 2}, wantErr: "--out"},
		{name: "too few custodians", f: shareSetFlags{shares: 3, threshold: 2, out: dir, custodians: []string{"a", "b"}}, wantErr: "2 --custodian flags for 3 shares"},
		{name: "duplicate custodian", f: shareSetFlags{shares: 2, threshold: 2, out: dir, custodians: []string{"a", "a"}}, wantErr: "twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ss, err := tc.f.validate()
			if tc.wantErr != "" {
				var u usageError
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.As(err, &u) {
					t.Fatalf("validate() = %v; want usage error %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(ss.Names, ",") != strings.Join(tc.names, ",") {
				t.Fatalf("names %v, want %v", ss.Names, tc.names)
			}
		})
	}
}

func TestShareSetPrepareRefusesOverwrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	ss, err := shareSetFlags{shares: 2, threshold: 1, out: dir}.validate()
	if err != nil {
		t.Fatal(err)
	}
	if err := ss.prepare(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("out dir: %v %v", fi, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "share-2.txt"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := ss.prepare(); err == nil || !strings.Contains(err.Error(), "share-2.txt") {
		t.Fatalf("prepare over an existing share file: %v", err)
	}
}

func TestWriteNewFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := writeNewFile(p, []byte("one")); err != nil {
		t.Fatal(err)
	}
	if err := writeNewFile(p, []byte("two")); err == nil {
		t.Fatal("writeNewFile overwrote a file")
	}
	data, _ := os.ReadFile(p)
	fi, _ := os.Stat(p)
	if string(data) != "one" || fi.Mode().Perm() != 0o600 {
		t.Fatalf("file %q mode %v", data, fi.Mode().Perm())
	}
}

func TestReadTransportKey(t *testing.T) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	tk := id.Recipient().String()
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name, to, want, wantErr string
	}{
		{name: "literal", to: tk, want: tk},
		{name: "file", to: write("a.tk", tk+"\n"), want: tk},
		{name: "file with comment", to: write("b.tk", "# backup module\n\n"+tk+"\n"), want: tk},
		{name: "empty file", to: write("c.tk", "\n# nothing\n"), wantErr: "empty"},
		{name: "not a key", to: write("d.tk", "hello\n"), wantErr: "does not hold"},
		{name: "missing file", to: filepath.Join(dir, "nope"), wantErr: "transport key file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readTransportKey(tc.to)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("readTransportKey = %q, %v; want error %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("readTransportKey = %q, %v", got, err)
			}
		})
	}
}

func TestDecodeShareNeedsIdentity(t *testing.T) {
	for _, in := range []string{"age-encryption.org/v1\n-> X25519 abc\n", "\n-----BEGIN AGE ENCRYPTED FILE-----\nYWdl\n-----END AGE ENCRYPTED FILE-----\n"} {
		if _, err := decodeShare([]byte(in), nil); !errors.Is(err, errNeedIdentity) {
			t.Errorf("decodeShare(%q) = %v, want errNeedIdentity", in, err)
		}
	}
}

// FuzzDecodeShare feeds arbitrary share files to the CLI's share decoder,
// with and without an age identity: it must return an error, never panic.
func FuzzDecodeShare(f *testing.F) {
	f.Add([]byte(""))
	f.Add([]byte("not a share"))
	f.Add([]byte("age-encryption.org/v1\n-> X25519 abc\n--- def\n"))
	f.Add([]byte("-----BEGIN AGE ENCRYPTED FILE-----\nYWdlLWVuY3J5cHRpb24ub3JnL3YxCg==\n-----END AGE ENCRYPTED FILE-----\n"))
	f.Add([]byte("hsmca-share v1\nmodule: x\npartition: issuing\n"))
	id, err := age.GenerateX25519Identity()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > maxShareFileSize {
			return
		}
		_, _ = decodeShare(data, nil)
		_, _ = decodeShare(data, []age.Identity{id})
	})
}

// FuzzParseCustodian: the --custodian flag parser returns a name that is a
// safe file name, or an error.
func FuzzParseCustodian(f *testing.F) {
	f.Add("alice")
	f.Add("bob=age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq")
	f.Add("../../etc=age1")
	f.Add("=")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := parseCustodian(s)
		if err != nil {
			return
		}
		if c.Name == "" || strings.ContainsAny(c.Name, "/\\\x00") || c.Name == "." || c.Name == ".." || strings.HasPrefix(c.Name, ".") {
			t.Fatalf("parseCustodian(%q) accepted unsafe name %q", s, c.Name)
		}
	})
}
