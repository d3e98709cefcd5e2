package acme

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"strings"
	"sync"

	jose "github.com/go-jose/go-jose/v4"
)

// allowedAlgs are the JWS algorithms the server accepts (RFC 8555 §6.2
// requires ES256 and EdDSA support; RS256 and ES384 are common in clients).
var allowedAlgs = []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.RS256, jose.EdDSA}

func algAllowed(a string) bool {
	for _, x := range allowedAlgs {
		if string(x) == a {
			return true
		}
	}
	return false
}

// protectedHeader is the part of the JWS protected header ACME uses, and
// the two members that change how a JWS is processed (crit, b64), which
// parseJWS refuses.
type protectedHeader struct {
	Alg   string          `json:"alg"`
	Nonce string          `json:"nonce"`
	URL   string          `json:"url"`
	Kid   string          `json:"kid"`
	JWK   json.RawMessage `json:"jwk"`
	Crit  json.RawMessage `json:"crit"`
	B64   json.RawMessage `json:"b64"`
}

// flatJWS is the flattened JSON serialization ACME requires (RFC 8555 §6.2).
type flatJWS struct {
	Protected string          `json:"protected"`
	Payload   *string         `json:"payload"`
	Signature string          `json:"signature"`
	Header    json.RawMessage `json:"header,omitempty"`
	// Present in the general serialization, which ACME forbids.
	Signatures json.RawMessage `json:"signatures,omitempty"`
}

// parsedJWS is a syntactically valid, not yet verified, ACME JWS.
type parsedJWS struct {
	hdr     protectedHeader
	jwk     *jose.JSONWebKey // when the header carries "jwk"
	payload []byte
	signed  string // protected "." payload, as received: the signing input
	sig     []byte
}

// parseJWS checks the outer form of an ACME request body (RFC 8555 §6.2):
// flattened JSON, one signature, only a protected header, an allowed
// algorithm, exactly one of kid and jwk. It does not verify the signature.
func parseJWS(body []byte) (*parsedJWS, *Problem) {
	var f flatJWS
	if err := json.Unmarshal(body, &f); err != nil {
		return nil, malformed("request body is not a JWS in flattened JSON serialization")
	}
	if f.Signatures != nil || f.Protected == "" || f.Signature == "" {
		return nil, malformed("JWS must be in flattened JSON serialization with protected, payload and signature")
	}
	if f.Payload == nil {
		// Some JOSE libraries drop an empty payload member; read it as
		// POST-as-GET, like an explicit "".
		empty := ""
		f.Payload = &empty
	}
	if len(f.Header) > 0 && !bytes.Equal(bytes.TrimSpace(f.Header), []byte("null")) {
		return nil, malformed("JWS must not have an unprotected header")
	}
	hb, err := base64.RawURLEncoding.DecodeString(f.Protected)
	if err != nil {
		return nil, malformed("JWS protected header is not base64url")
	}
	p := &parsedJWS{signed: f.Protected + "." + *f.Payload}
	if p.sig, err = base64.RawURLEncoding.DecodeString(f.Signature); err != nil {
		return nil, malformed("JWS signature is not base64url")
	}
	if err := json.Unmarshal(hb, &p.hdr); err != nil {
		return nil, malformed("JWS protected header is not a JSON object")
	}
	if p.hdr.Crit != nil {
		// RFC 7515 §4.1.11: a recipient must refuse a JWS whose crit
		// names an extension it does not understand; this server
		// understands none.
		return nil, malformed("JWS protected header has crit; no extension is supported")
	}
	if p.hdr.B64 != nil && string(p.hdr.B64) != "true" {
		// RFC 7797: b64 false means an unencoded payload, which ACME
		// does not use.
		return nil, malformed("JWS protected header has b64 other than true; the payload must be base64url")
	}
	if !algAllowed(p.hdr.Alg) {
		pr := prob(ProbBadSignatureAlgorithm, 400, "unsupported JWS algorithm "+quoteShort(p.hdr.Alg)+"; use ES256, ES384, RS256 or EdDSA")
		for _, a := range allowedAlgs {
			pr.Algorithms = append(pr.Algorithms, string(a))
		}
		return nil, pr
	}
	hasJWK := len(p.hdr.JWK) > 0 && string(p.hdr.JWK) != "null"
	if hasJWK == (p.hdr.Kid != "") {
		return nil, malformed("JWS protected header must have exactly one of kid and jwk")
	}
	if p.hdr.URL == "" {
		return nil, malformed("JWS protected header has no url")
	}
	if hasJWK {
		var k jose.JSONWebKey
		if err := k.UnmarshalJSON(p.hdr.JWK); err != nil || !k.Valid() || !k.IsPublic() {
			return nil, prob(ProbBadPublicKey, 400, "JWS jwk is not a valid public key")
		}
		if err := checkKey(k.Key); err != nil {
			return nil, prob(ProbBadPublicKey, 400, err.Error())
		}
		p.jwk = &k
	}
	if p.payload, err = base64.RawURLEncoding.DecodeString(*f.Payload); err != nil {
		return nil, malformed("JWS payload is not base64url")
	}
	return p, nil
}

// checkKey accepts the account key types the allowed algorithms can use.
func checkKey(k any) error {
	switch k := k.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve.Params().Name {
		case "P-256", "P-384":
			return nil
		}
		return errors.New("acme: unsupported ECDSA curve")
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 || k.N.BitLen() > 8192 {
			return errors.New("acme: RSA key must be 2048 to 8192 bits")
		}
		return nil
	case ed25519.PublicKey:
		return nil
	}
	return errors.New("acme: unsupported key type")
}

// verify checks the signature with key (RFC 7515 §5.2, RFC 7518 §3.4 for
// the ECDSA r||s form) and that the algorithm fits the key type. It works
// on the signing input as received, without re-parsing the JWS.
func (p *parsedJWS) verify(key *jose.JSONWebKey) bool {
	switch k := key.Key.(type) {
	case *ecdsa.PublicKey:
		var h []byte
		switch {
		case p.hdr.Alg == "ES256" && k.Curve.Params().Name == "P-256" && len(p.sig) == 64:
			sum := sha256.Sum256([]byte(p.signed))
			h = sum[:]
		case p.hdr.Alg == "ES384" && k.Curve.Params().Name == "P-384" && len(p.sig) == 96:
			sum := sha512.Sum384([]byte(p.signed))
			h = sum[:]
		default:
			return false
		}
		n := len(p.sig) / 2
		r := new(big.Int).SetBytes(p.sig[:n])
		sv := new(big.Int).SetBytes(p.sig[n:])
		return ecdsa.Verify(k, h, r, sv)
	case *rsa.PublicKey:
		if p.hdr.Alg != "RS256" {
			return false
		}
		sum := sha256.Sum256([]byte(p.signed))
		return rsa.VerifyPKCS1v15(k, crypto.SHA256, sum[:], p.sig) == nil
	case ed25519.PublicKey:
		return p.hdr.Alg == "EdDSA" && ed25519.Verify(k, []byte(p.signed), p.sig)
	}
	return false
}

// verifyAccount is verify for an account's key: an ES256 signature under a
// key that tables has a precomputed verifier for is checked through it
// (the same check, about half the time); anything else goes to verify,
// and an ES256 signature that verifies there counts towards its key's
// table.
func (p *parsedJWS) verifyAccount(key *jose.JSONWebKey, tables *p256Tables) bool {
	k, ok := key.Key.(*ecdsa.PublicKey)
	if !ok || p.hdr.Alg != "ES256" || len(p.sig) != 64 {
		return p.verify(key)
	}
	if t := tables.get(k); t != nil {
		sum := sha256.Sum256([]byte(p.signed))
		return t.Verify(sum[:], new(big.Int).SetBytes(p.sig[:32]), new(big.Int).SetBytes(p.sig[32:]))
	}
	if !p.verify(key) {
		return false
	}
	tables.verified(k)
	return true
}

// keyCache keeps parsed account keys, bounded, keyed by their JSON.
type keyCache struct {
	mu sync.Mutex
	m  map[string]*jose.JSONWebKey
}

const keyCacheMax = 4096

func (c *keyCache) get(raw []byte) (*jose.JSONWebKey, error) {
	c.mu.Lock()
	k, ok := c.m[string(raw)]
	c.mu.Unlock()
	if ok {
		return k, nil
	}
	k = new(jose.JSONWebKey)
	if err := k.UnmarshalJSON(raw); err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= keyCacheMax {
		c.m = make(map[string]*jose.JSONWebKey)
	}
	c.m[string(raw)] = k
	c.mu.Unlock()
	return k, nil
}

// thumbprint is the RFC 7638 SHA-256 thumbprint, base64url.
func thumbprint(k *jose.JSONWebKey) (string, error) {
	t, err := k.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(t), nil
}

func quoteShort(s string) string {
	if len(s) > 32 {
		s = s[:32] + "..."
	}
	return `"` + strings.ToValidUTF8(s, "?") + `"`
}
