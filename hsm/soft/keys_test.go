package soft

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/hsmca/hsmca/hsm"
	bolt "go.etcd.io/bbolt"
)

// editKey changes a stored key record directly in module.db.
func editKey(t *testing.T, f *fixture, id string, edit func(r map[string]any)) {
	t.Helper()
	if err := f.m.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(filepath.Join(f.dir, FileName), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(keysBucket)
		var r map[string]any
		if err := json.Unmarshal(b.Get([]byte(id)), &r); err != nil {
			return err
		}
		edit(r)
		v, err := json.Marshal(r)
		if err != nil {
			return err
		}
		return b.Put([]byte(id), v)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	f.open(t)
}

func TestTamperedKeyFailsAlone(t *testing.T) {
	tests := []struct {
		name string
		edit func(r map[string]any)
	}{
		{"exportable flipped", func(r map[string]any) { r["exportable"] = true }},
		{"label changed", func(r map[string]any) { r["label"] = "other" }},
		{"type changed", func(r map[string]any) { r["type"] = "ecdsa-p384" }},
		{"created changed", func(r map[string]any) { r["created"] = "2020-01-01T00:00:00Z" }},
		{"ciphertext changed", func(r map[string]any) {
			s := r["wrapped"].(string)
			c := "A"
			if s[20] == 'A' {
				c = "B"
			}
			r["wrapped"] = s[:20] + c + s[21:]
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			shares := f.init(t, "issuing", 1, 1, hsm.PolicyOnline)
			p := f.part(t, "issuing")
			activate(t, p, shares)
			k1, err := p.GenerateKey(hsm.ECDSAP256, "victim", false)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := p.GenerateKey(hsm.Ed25519, "bystander", false); err != nil {
				t.Fatal(err)
			}
			editKey(t, f, k1.ID, tc.edit)
			p = f.part(t, "issuing")
			activate(t, p, shares)
			s, err := p.Signer(k1.ID)
			if err != nil {
				t.Fatal(err)
			}
			err = signVerify(t, s)
			var lerr *hsm.KeyLoadError
			if !errors.As(err, &lerr) || lerr.ID != k1.ID {
				t.Fatalf("tampered key signed or failed unclearly: %v", err)
			}
			if _, err := p.ExportKey(k1.ID, mustRecipient(t)); !errors.As(err, &lerr) {
				t.Fatalf("export of tampered key: %v", err)
			}
			other, err := p.Signer("bystander")
			if err != nil {
				t.Fatal(err)
			}
			if err := signVerify(t, other); err != nil {
				t.Fatalf("other key: %v", err)
			}
		})
	}
}

func mustRecipient(t testing.TB) string {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	return id.Recipient().String()
}

func TestExportImport(t *testing.T) {
	a := newFixture(t)
	b := newFixture(t)
	as := a.init(t, "issuing", 1, 1, hsm.PolicyOnline)
	bs := b.init(t, "backup", 2, 2, hsm.PolicyOnline)
	pa, pb := a.part(t, "issuing"), b.part(t, "backup")
	activate(t, pa, as)
	for _, typ := range hsm.KeyTypes {
		t.Run(string(typ), func(t *testing.T) {
			k, err := pa.GenerateKey(typ, "ex-"+string(typ), true)
			if err != nil {
				t.Fatal(err)
			}
			tk, err := pb.TransportKey() // works while sealed
			if err != nil {
				t.Fatal(err)
			}
			blob, err := pa.ExportKey(k.ID, tk)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := pb.ImportKey(blob); !errors.Is(err, hsm.ErrSealed) {
				t.Fatalf("import while sealed: %v", err)
			}
			activate(t, pb, bs)
			defer pb.Seal()
			got, err := pb.ImportKey(blob)
			if err != nil {
				t.Fatal(err)
			}
			if got.ID != k.ID || got.Label != k.Label || !got.Exportable || got.Type != typ {
				t.Fatalf("imported %+v, exported %+v", got, k)
			}
			s, err := pb.Signer(k.ID)
			if err != nil {
				t.Fatal(err)
			}
			// The imported key's signature verifies with the source public key.
			src, _ := pa.Signer(k.ID)
			if err := signVerify(t, &fixedPublic{s, src.Public()}); err != nil {
				t.Fatal(err)
			}
			if _, err := pb.ImportKey(blob); !errors.Is(err, hsm.ErrKeyExists) {
				t.Fatalf("second import: %v", err)
			}
		})
	}
	k, err := pa.GenerateKey(hsm.ECDSAP256, "stays", false)
	if err != nil {
		t.Fatal(err)
	}
	tk, _ := pb.TransportKey()
	if _, err := pa.ExportKey(k.ID, tk); !errors.Is(err, hsm.ErrNotExportable) {
		t.Fatalf("export of a non-exportable key: %v", err)
	}
	// A blob wrapped for another partition does not import.
	e, _ := pa.GenerateKey(hsm.ECDSAP256, "elsewhere", true)
	blob, err := pa.ExportKey(e.ID, mustRecipient(t))
	if err != nil {
		t.Fatal(err)
	}
	activate(t, pb, bs)
	if _, err := pb.ImportKey(blob); err == nil {
		t.Fatal("imported a blob wrapped for another transport key")
	}
	if bytes.Contains(blob, []byte("PRIVATE")) {
		t.Fatal("blob holds plaintext")
	}
}

type fixedPublic struct {
	crypto.Signer
	pub crypto.PublicKey
}

func (f *fixedPublic) Public() crypto.PublicKey { return f.pub }

func TestEveryKeyTypeSigns(t *testing.T) {
	f := newFixture(t)
	shares := f.init(t, "issuing", 1, 1, hsm.PolicyOnline)
	p := f.part(t, "issuing")
	activate(t, p, shares)
	for _, typ := range hsm.KeyTypes {
		t.Run(string(typ), func(t *testing.T) {
			k, err := p.GenerateKey(typ, string(typ), false)
			if err != nil {
				t.Fatal(err)
			}
			if k.Exportable || k.Type != typ || len(k.ID) != 32 {
				t.Fatalf("info: %+v", k)
			}
			s, err := p.Signer(k.ID)
			if err != nil {
				t.Fatal(err)
			}
			if err := signVerify(t, s); err != nil {
				t.Fatal(err)
			}
		})
	}
	// RSA-PSS options pass through.
	s, _ := p.Signer(string(hsm.RSA2048))
	d := sha256.Sum256([]byte("pss"))
	opts := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
	sig, err := s.Sign(rand.Reader, d[:], opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := rsa.VerifyPSS(s.Public().(*rsa.PublicKey), crypto.SHA256, d[:], sig, opts); err != nil {
		t.Fatal(err)
	}
}

func FuzzParseExport(f *testing.F) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		f.Fatal(err)
	}
	var buf bytes.Buffer
	w, _ := age.Encrypt(&buf, id.Recipient())
	w.Write([]byte(`{"format":"hsmca wrapped key v1","type":"ed25519","label":"x","pkcs8":"AAAA"}`))
	w.Close()
	f.Add(buf.Bytes())
	f.Add(buf.Bytes()[:40])
	f.Add([]byte("age-encryption.org/v1\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, blob []byte) {
		_, _, _ = parseExport(blob, id)
	})
}
