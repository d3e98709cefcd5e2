package acme_test

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	hacme "github.com/hsmca/hsmca/acme"
)

// A CA-policy refusal gives one subproblem per refused identifier,
// although the CA reports only the first name it refuses; a refusal of
// the whole list (too many names) has none.
func TestPolicyRefusalSubproblems(t *testing.T) {
	e := newEnv(t, nil)
	a := newRaw(t, e)
	a.register()
	type problem struct {
		Type, Detail string
		Status       int
		Identifier   *hacme.Identifier
		Subproblems  []problem
	}
	order := func(names ...string) (rawResp, problem) {
		var ids []map[string]string
		for _, n := range names {
			ids = append(ids, map[string]string{"type": "dns", "value": n})
		}
		r := a.post(e.base+"new-order", map[string]any{"identifiers": ids}, signOpts{})
		return r, decode[problem](t, r)
	}
	cases := []struct {
		name     string
		maxNames int32
		names    []string
		refused  []string // the subproblems' identifiers
	}{
		{"two of three", 0, []string{"a.denied.test", "ok.example.test", "*.b.denied.test"}, []string{"a.denied.test", "*.b.denied.test"}},
		{"one of two", 0, []string{"ok.example.test", "c.denied.test"}, []string{"c.denied.test"}},
		{"one", 0, []string{"d.denied.test"}, []string{"d.denied.test"}},
		{"the list", 2, []string{"x.example.test", "y.example.test", "z.example.test"}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.ca.maxNames.Store(c.maxNames)
			defer e.ca.maxNames.Store(0)
			r, p := order(c.names...)
			if r.code != http.StatusBadRequest || p.Type != hacme.ProbRejectedIdentifier || p.Identifier != nil {
				t.Fatalf("%d %s", r.code, r.body)
			}
			var got []string
			for _, sp := range p.Subproblems {
				if sp.Type != hacme.ProbRejectedIdentifier || sp.Identifier == nil || sp.Status != 0 || !strings.Contains(sp.Detail, "at most") && !strings.Contains(sp.Detail, "allowed suffixes") {
					t.Fatalf("subproblem %+v", sp)
				}
				got = append(got, sp.Identifier.Value)
			}
			if c.refused == nil && p.Detail != "at most 2 names" {
				t.Fatalf("detail %q", p.Detail)
			}
			if !slices.Equal(got, c.refused) {
				t.Fatalf("subproblems name %q, want %q: %s", got, c.refused, r.body)
			}
		})
	}
}

// TestSingleLabelNewOrder: a private PKI has single-label hosts ("db"),
// which the CA accepts (its name policy decides); newOrder must not refuse
// them as malformed.
func TestSingleLabelNewOrder(t *testing.T) {
	e := newEnv(t, nil)
	a := newRaw(t, e)
	a.register()
	r := a.post(e.base+"new-order", map[string]any{"identifiers": []map[string]string{{"type": "dns", "value": "db"}}}, signOpts{})
	if r.code != http.StatusCreated {
		t.Fatalf("new order for a single-label name: %d %s", r.code, r.body)
	}
}
