package pkcs11

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

func u64(v uint64) *uint64 { return &v }

func TestParseURI(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want URI
	}{
		{"empty", "pkcs11:", URI{}},
		{"scheme case", "PKCS11:token=a", URI{Token: "a"}},
		{"token and object", "pkcs11:token=hsmca%20issuing;object=root%20key;type=private",
			URI{Token: "hsmca issuing", Object: "root key", Type: "private"}},
		{"id bytes", "pkcs11:id=%01%02%FF%aB", URI{ID: []byte{1, 2, 0xff, 0xab}}},
		{"id literal", "pkcs11:id=AB", URI{ID: []byte("AB")}},
		{"slot zero", "pkcs11:slot-id=0", URI{SlotID: u64(0)}},
		{"serial model manufacturer", "pkcs11:manufacturer=SoftHSM%20project;model=SoftHSM%20v2;serial=8d3ad1c5",
			URI{Manufacturer: "SoftHSM project", Model: "SoftHSM v2", Serial: "8d3ad1c5"}},
		{"library", "pkcs11:library-manufacturer=OpenSC;library-description=x;library-version=2.20",
			URI{LibraryManufacturer: "OpenSC", LibraryDescription: "x", LibraryVersion: "2.20"}},
		{"slot", "pkcs11:slot-description=s;slot-manufacturer=m", URI{SlotDescription: "s", SlotManufacturer: "m"}},
		{"query", "pkcs11:token=t?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/pin",
			URI{Token: "t", ModulePath: "/usr/lib/softhsm/libsofthsm2.so", PinSource: "file:/etc/pin"}},
		{"module-name", "pkcs11:?module-name=softhsm2", URI{ModuleName: "softhsm2"}},
		{"reserved chars allowed", "pkcs11:object=a:b@c!$'()*+,=d", URI{Object: "a:b@c!$'()*+,=d"}},
		{"slash encoded in path", "pkcs11:object=a%2Fb", URI{Object: "a/b"}},
		{"utf-8 label", "pkcs11:token=%C3%A9t%C3%A9", URI{Token: "été"}},
		{"empty value unconstrained", "pkcs11:token=;object=k", URI{Object: "k"}},
		{"vendor attrs", "pkcs11:token=t;x-foo=1?x-bar=2&x-bar=3",
			URI{Token: "t", Vendor: []VendorAttr{{Name: "x-foo", Value: "1"}, {Query: true, Name: "x-bar", Value: "2"}, {Query: true, Name: "x-bar", Value: "3"}}}},
		{"p11-kit example", "pkcs11:model=p11-kit-trust;manufacturer=PKCS%2311%20Kit;serial=1;token=System%20Trust",
			URI{Model: "p11-kit-trust", Manufacturer: "PKCS#11 Kit", Serial: "1", Token: "System Trust"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseURI(tt.in)
			if err != nil {
				t.Fatalf("ParseURI(%q): %v", tt.in, err)
			}
			if !reflect.DeepEqual(*got, tt.want) {
				t.Fatalf("ParseURI(%q) = %+v, want %+v", tt.in, *got, tt.want)
			}
			again, err := ParseURI(got.String())
			if err != nil {
				t.Fatalf("reparse %q: %v", got.String(), err)
			}
			if !reflect.DeepEqual(again, got) {
				t.Fatalf("round trip %q -> %q changed: %+v vs %+v", tt.in, got.String(), again, got)
			}
		})
	}
}

func TestParseURIErrors(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"no scheme", "token=a", `must start with "pkcs11:"`},
		{"other scheme", "file:/x", `must start with "pkcs11:"`},
		{"pin-value", "pkcs11:token=a?pin-value=1234", "pin-value in a pkcs11: URI is refused"},
		{"unknown path attr", "pkcs11:tokn=a", `unknown URI path attribute "tokn"`},
		{"unknown query attr", "pkcs11:?modulepath=/x", `unknown URI query attribute "modulepath"`},
		{"duplicate", "pkcs11:token=a;token=b", `"token" appears twice`},
		{"duplicate query", "pkcs11:?module-path=/a&module-path=/b", `"module-path" appears twice`},
		{"no equals", "pkcs11:token", "is not name=value"},
		{"empty name", "pkcs11:=x", "is not name=value"},
		{"bad hex", "pkcs11:id=%zz", "bad percent-encoding"},
		{"truncated pct", "pkcs11:id=%0", "truncated percent-encoding"},
		{"slash in path", "pkcs11:object=a/b", "must be percent-encoded"},
		{"space", "pkcs11:object=a b", "must be percent-encoded"},
		{"bad slot", "pkcs11:slot-id=-1", "not a decimal number"},
		{"huge slot", "pkcs11:slot-id=99999999999999999999999", "out of range"},
		{"bad type", "pkcs11:type=secret", "not public, private"},
		{"bad version", "pkcs11:library-version=1.x", "not M or M.N"},
		{"invalid utf8", "pkcs11:token=%ff", "not valid UTF-8"},
		{"fragment", "pkcs11:token=a#b", "fragment"},
		{"too long", "pkcs11:object=" + strings.Repeat("a", maxURILen), "accepted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseURI(tt.in)
			if err == nil {
				t.Fatalf("ParseURI(%q) succeeded, want error containing %q", tt.in, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "hsm/pkcs11: ") {
				t.Fatalf("ParseURI(%q) error %q, want it to contain %q with package prefix", tt.in, err, tt.want)
			}
		})
	}
}

func TestURIPinValueNotEchoed(t *testing.T) {
	_, err := ParseURI("pkcs11:token=a?pin-value=s3cr3t-PIN")
	if err == nil || strings.Contains(err.Error(), "s3cr3t-PIN") {
		t.Fatalf("error must not echo the PIN: %v", err)
	}
}

func TestURIString(t *testing.T) {
	u := &URI{Token: "a;b/c?d", ID: []byte{0, 0xff}, Object: "k", SlotID: u64(3),
		ModulePath: "/usr/lib/x.so", PinSource: "file:/run/pin&x"}
	want := "pkcs11:slot-id=3;token=a%3Bb%2Fc%3Fd;id=%00%ff;object=k?module-path=/usr/lib/x.so&pin-source=file:/run/pin%26x"
	if got := u.String(); got != want {
		t.Fatalf("String() = %q, want %q", got, want)
	}
	tok := u.TokenURI()
	if tok.Object != "" || tok.ID != nil || tok.PinSource != "" || tok.Token != u.Token || tok.ModulePath != u.ModulePath {
		t.Fatalf("TokenURI() = %+v", tok)
	}
}

func TestPinFile(t *testing.T) {
	tests := []struct {
		src, want, err string
	}{
		{"", "", ""},
		{"file:/etc/hsmca/pin", "/etc/hsmca/pin", ""},
		{"file:///etc/hsmca/pin", "/etc/hsmca/pin", ""},
		{"file://localhost/etc/pin", "/etc/pin", ""},
		{"/abs/pin", "/abs/pin", ""},
		{"rel/pin", "rel/pin", ""},
		{"./rel:pin", "./rel:pin", ""},
		{"file://example.com/etc/pin", "", "names host"},
		{"|/bin/cat /etc/pin", "", "program"},
		{"env:PIN", "", `scheme "env" is not supported`},
		{"file:", "", "no path"},
	}
	for _, tt := range tests {
		t.Run(tt.src, func(t *testing.T) {
			u := &URI{PinSource: tt.src}
			got, err := u.PinFile()
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("PinFile(%q) = %q, %v; want error %q", tt.src, got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("PinFile(%q) = %q, %v; want %q", tt.src, got, err, tt.want)
			}
		})
	}
}

func FuzzParseURI(f *testing.F) {
	for _, s := range []string{
		"pkcs11:",
		"pkcs11:token=hsmca;object=key;type=private;id=%01%02",
		"pkcs11:slot-id=0;serial=1234?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/pin",
		"pkcs11:library-version=2.40;x-vendor=a?x-q=%20",
		"pkcs11:token=%C3%A9;object=a%2Fb",
		"pkcs11:id=%zz",
		"pkcs11:token=a;token=b",
		"pkcs11:?pin-value=1234",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseURI(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "hsm/pkcs11: ") {
				t.Fatalf("error without package prefix: %v", err)
			}
			return
		}
		out := u.String()
		again, err := ParseURI(out)
		if err != nil {
			t.Fatalf("ParseURI(%q) ok but String() %q does not reparse: %v", s, out, err)
		}
		if !reflect.DeepEqual(u, again) {
			t.Fatalf("round trip changed %q: %+v vs %+v", s, u, again)
		}
		if out2 := again.String(); out2 != out {
			t.Fatalf("String not stable: %q vs %q", out, out2)
		}
		if len(u.ID) > 0 && !bytes.Contains([]byte(out), []byte("id=%")) {
			t.Fatalf("id lost in %q", out)
		}
		_, _ = u.PinFile()
	})
}
