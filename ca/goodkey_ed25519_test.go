package ca

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"testing"
)

// TestCheckEd25519Key refuses the small-order points (libsodium's list of
// their encodings, canonical and not), non-canonical encodings and
// encodings that are not curve points, and accepts generated keys.
func TestCheckEd25519Key(t *testing.T) {
	ff := strings.Repeat("ff", 30)
	tests := []struct {
		name, hex string
		want      string // part of the error; "" means accepted
	}{
		{"identity", "01" + strings.Repeat("00", 31), "small order"},
		{"order 2 (y = -1)", "ec" + ff + "7f", "small order"},
		{"order 4 (y = 0)", strings.Repeat("00", 32), "small order"},
		{"order 4 (y = 0, negative x)", strings.Repeat("00", 31) + "80", "small order"},
		{"order 8", "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05", "small order"},
		{"order 8, negative x", "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85", "small order"},
		{"order 8 (other)", "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a", "small order"},
		{"order 8 (other), negative x", "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa", "small order"},
		{"identity as y = p + 1", "ee" + ff + "7f", "not canonically encoded"},
		{"y = p", "ed" + ff + "7f", "not canonically encoded"},
		{"identity, negative zero", "01" + strings.Repeat("00", 30) + "80", "negative zero"},
		{"not on the curve (y = 2)", "02" + strings.Repeat("00", 31), "not a point on the curve"},
		{"short", "01", "bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := hex.DecodeString(tt.hex)
			if err != nil {
				t.Fatal(err)
			}
			err = checkEd25519Key(k)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("checkEd25519Key(%s) = %v; want an error containing %q", tt.hex, err, tt.want)
			}
		})
	}
	for range 50 {
		pub, _, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkEd25519Key(pub); err != nil {
			t.Fatalf("generated key %x refused: %v", []byte(pub), err)
		}
	}
}

func BenchmarkCheckEd25519Key(b *testing.B) {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := checkEd25519Key(pub); err != nil {
			b.Fatal(err)
		}
	}
}
