package ca

import (
	"crypto"
	"fmt"
	"testing"
	"time"
)

// The OCSP cache refuses a put only for a serial forgotten since its
// begin, and stays safe when it drops its record of forgets to bound its
// memory: a put begun before that is refused.
func TestOCSPCachePerSerialForget(t *testing.T) {
	now := time.Now()
	e := ocspEntry{der: []byte{1}, refresh: now.Add(time.Hour)}
	key := func(serial string) string { return ocspKey("iss", serial, crypto.SHA1) }
	cached := func(oc *ocspCache, serial string) bool {
		_, ok := oc.get(key(serial), now)
		return ok
	}
	tests := []struct {
		name    string
		between func(oc *ocspCache) // runs between begin and put of serial "a"
		want    bool
	}{
		{name: "nothing", between: func(*ocspCache) {}, want: true},
		{name: "same serial forgotten", between: func(oc *ocspCache) { oc.forget("iss", "a") }, want: false},
		{name: "same serial, other issuer", between: func(oc *ocspCache) { oc.forget("other", "a") }, want: true},
		{name: "other serial forgotten", between: func(oc *ocspCache) { oc.forget("iss", "b") }, want: true},
		{name: "same serial, then its record dropped", want: false, between: func(oc *ocspCache) {
			oc.forget("iss", "a")
			for i := 0; i < ocspForgetMax; i++ {
				oc.forget("iss", fmt.Sprint("x", i))
			}
			if _, ok := oc.forgotAt["iss/a"]; ok {
				t.Fatal("forgotAt kept more than ocspForgetMax serials")
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var oc ocspCache
			oc.init()
			oc.forget("iss", "a") // an earlier forget does not matter
			token := oc.begin()
			tt.between(&oc)
			oc.put("iss", "a", key("a"), e, token)
			if got := cached(&oc, "a"); got != tt.want {
				t.Fatalf("cached %v, want %v", got, tt.want)
			}
			// A request begun now is cached.
			oc.put("iss", "a", key("a"), e, oc.begin())
			if !cached(&oc, "a") {
				t.Fatal("a put begun after every forget was not cached")
			}
		})
	}
}
