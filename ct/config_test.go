package ct

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/hsmca/hsmca/ct/cttest"
)

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

type listEntry struct {
	op, desc, url string
	pub           crypto.PublicKey
	state         string // "" for none
	tiled         bool
	start, end    time.Time
	badID         bool
}

// logListJSON writes a loglist3 document by hand, so that the parser is
// tested against the published format rather than against itself.
func logListJSON(t testing.TB, entries []listEntry) []byte {
	t.Helper()
	type op struct {
		Name      string           `json:"name"`
		Email     []string         `json:"email"`
		Logs      []map[string]any `json:"logs"`
		TiledLogs []map[string]any `json:"tiled_logs"`
	}
	var ops []*op
	byName := map[string]*op{}
	for _, e := range entries {
		o := byName[e.op]
		if o == nil {
			o = &op{Name: e.op, Email: []string{"ct@example.test"}, Logs: []map[string]any{}, TiledLogs: []map[string]any{}}
			byName[e.op] = o
			ops = append(ops, o)
		}
		der, err := x509.MarshalPKIXPublicKey(e.pub)
		if err != nil {
			t.Fatal(err)
		}
		id := sha256.Sum256(der)
		if e.badID {
			id[0] ^= 1
		}
		l := map[string]any{
			"description": e.desc,
			"log_id":      base64.StdEncoding.EncodeToString(id[:]),
			"key":         base64.StdEncoding.EncodeToString(der),
			"mmd":         86400,
		}
		if e.state != "" {
			l["state"] = map[string]any{e.state: map[string]any{"timestamp": "2026-01-01T00:00:00Z"}}
		}
		if !e.start.IsZero() {
			l["temporal_interval"] = map[string]any{"start_inclusive": e.start.UTC().Format(time.RFC3339), "end_exclusive": e.end.UTC().Format(time.RFC3339)}
		}
		if e.tiled {
			l["submission_url"] = e.url
			l["monitoring_url"] = e.url
			o.TiledLogs = append(o.TiledLogs, l)
		} else {
			l["url"] = e.url
			o.Logs = append(o.Logs, l)
		}
	}
	b, err := json.MarshalIndent(map[string]any{"version": "1.0", "log_list_timestamp": "2026-11-01T00:00:00Z", "operators": ops}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestConfigYAML(t *testing.T) {
	const doc = `
logs:
  - name: internal
    url: https://ct.example.test/2026/
    public_key: keys/internal.pem
    operator: platform
log_list: lists/log_list.json
min_scts: 2
min_operators: 2
timeout: 5s
retries: 3
backoff: 100ms
deadline: 20s
`
	var c Config
	dec := yaml.NewDecoder(strings.NewReader(doc))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		t.Fatal(err)
	}
	if c.Timeout != 5*time.Second || c.Deadline != 20*time.Second || c.Backoff != 100*time.Millisecond || c.Retries != 3 || c.MinSCTs != 2 || c.MinOperators != 2 {
		t.Fatalf("decoded %+v", c)
	}
	if c.Logs[0].Operator != "platform" || c.Logs[0].Name != "internal" {
		t.Fatalf("decoded log %+v", c.Logs[0])
	}
	c.ResolvePaths("/etc/hsmca")
	if c.Logs[0].PublicKey != "/etc/hsmca/keys/internal.pem" || c.LogList != "/etc/hsmca/lists/log_list.json" {
		t.Fatalf("ResolvePaths: %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestResolvePathsKeepsInlineKeys(t *testing.T) {
	k := newKey(t)
	der, _ := x509.MarshalPKIXPublicKey(k.Public())
	b64 := base64.StdEncoding.EncodeToString(der)
	p := pubPEM(t, k.Public())
	c := Config{Logs: []LogConfig{{PublicKey: b64}, {PublicKey: p}, {PublicKey: "/abs.pem"}}}
	c.ResolvePaths("/dir")
	if c.Logs[0].PublicKey != b64 || c.Logs[1].PublicKey != p || c.Logs[2].PublicKey != "/abs.pem" {
		t.Fatalf("ResolvePaths changed inline or absolute keys: %+v", c.Logs)
	}
}

func TestValidate(t *testing.T) {
	ok := LogConfig{URL: "https://ct.example.test/log", PublicKey: "k.pem"}
	cases := []struct {
		name string
		cfg  Config
		want string // "" for valid
	}{
		{"valid", Config{Logs: []LogConfig{ok}}, ""},
		{"log list only", Config{LogList: "l.json"}, ""},
		{"nothing", Config{}, "no logs configured"},
		{"no url", Config{Logs: []LogConfig{{PublicKey: "k"}}}, "url is required"},
		{"bad scheme", Config{Logs: []LogConfig{{URL: "ftp://x/", PublicKey: "k"}}}, "scheme must be http or https"},
		{"no host", Config{Logs: []LogConfig{{URL: "https:///x", PublicKey: "k"}}}, "no host"},
		{"query", Config{Logs: []LogConfig{{URL: "https://x/?a=b", PublicKey: "k"}}}, "query"},
		{"no key", Config{Logs: []LogConfig{{URL: "https://x/"}}}, "public_key is required"},
		{"negative min", Config{Logs: []LogConfig{ok}, MinSCTs: -1}, "must not be negative"},
		{"negative timeout", Config{Logs: []LogConfig{ok}, Timeout: -time.Second}, "must not be negative"},
		{"operators exceed scts", Config{Logs: []LogConfig{ok}, MinSCTs: 1, MinOperators: 2}, "exceeds min_scts"},
		{"timeout shorter than deadline", Config{Logs: []LogConfig{ok}, Timeout: 5 * time.Second, Deadline: 20 * time.Second}, ""},
		{"timeout equals default deadline", Config{Logs: []LogConfig{ok}, Timeout: DefaultDeadline}, "must be shorter than deadline"},
		{"timeout exceeds deadline", Config{Logs: []LogConfig{ok}, Timeout: 20 * time.Second, Deadline: 10 * time.Second}, "must be shorter than deadline"},
		{"timeout without retries", Config{Logs: []LogConfig{ok}, Timeout: 20 * time.Second, Deadline: 10 * time.Second, Retries: -1}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "ct: ") {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestLoadLogsKeys(t *testing.T) {
	dir := t.TempDir()
	k := newKey(t)
	der, _ := x509.MarshalPKIXPublicKey(k.Public())
	wantID := sha256.Sum256(der)
	writeFile(t, filepath.Join(dir, "k.pem"), []byte(pubPEM(t, k.Public())))
	writeFile(t, filepath.Join(dir, "k.der"), der)
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	edDER, _ := x509.MarshalPKIXPublicKey(edPub)
	rsaPEM := "-----BEGIN RSA PUBLIC KEY-----\nAAAA\n-----END RSA PUBLIC KEY-----\n"

	cases := []struct {
		name, key, want string
	}{
		{"pem file", filepath.Join(dir, "k.pem"), ""},
		{"der file", filepath.Join(dir, "k.der"), ""},
		{"inline base64", base64.StdEncoding.EncodeToString(der), ""},
		{"inline pem", pubPEM(t, k.Public()), ""},
		{"missing file", filepath.Join(dir, "nope.pem"), "read log public key"},
		{"ed25519 refused", base64.StdEncoding.EncodeToString(edDER), "not usable"},
		{"wrong pem type", rsaPEM, "want PUBLIC KEY"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			logs, err := LoadLogs(Config{Logs: []LogConfig{{URL: "https://ct.example.test/", PublicKey: tc.key}}})
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err = %v, want %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			l := logs[0]
			if l.ID != wantID {
				t.Errorf("log ID %x, want %x", l.ID, wantID)
			}
			if l.Name != "https://ct.example.test" || l.Operator != l.Name || l.URL != "https://ct.example.test" {
				t.Errorf("defaults not applied: %+v", l)
			}
		})
	}

	_, err := LoadLogs(Config{Logs: []LogConfig{
		{Name: "one", URL: "https://a.example.test/", PublicKey: filepath.Join(dir, "k.pem")},
		{Name: "two", URL: "https://b.example.test/", PublicKey: filepath.Join(dir, "k.der")},
	}})
	if err == nil || !strings.Contains(err.Error(), "same key") {
		t.Fatalf("duplicate log key: err = %v", err)
	}
}

func TestParseLogList(t *testing.T) {
	keys := []*struct{ pub crypto.PublicKey }{{newKey(t).Public()}, {newKey(t).Public()}, {newKey(t).Public()}, {newKey(t).Public()}, {newKey(t).Public()}}
	data := logListJSON(t, []listEntry{
		{op: "Alpha", desc: "alpha 2026", url: "https://alpha.example.test/2026/", pub: keys[0].pub, state: "usable"},
		{op: "Alpha", desc: "alpha old", url: "https://alpha.example.test/2020/", pub: keys[1].pub, state: "retired"},
		{op: "Beta", desc: "beta tiled", url: "https://beta.example.test/", pub: keys[2].pub, state: "qualified", tiled: true},
		{op: "Gamma", desc: "gamma private", url: "http://127.0.0.1:1/", pub: keys[3].pub},
		{op: "Gamma", desc: "gamma readonly", url: "https://gamma.example.test/", pub: keys[4].pub, state: "readonly"},
	})
	logs, err := ParseLogList(data)
	if err != nil {
		t.Fatal(err)
	}
	type row struct{ name, op, url, state string }
	var got []row
	for _, l := range logs {
		got = append(got, row{l.Name, l.Operator, l.URL, l.State})
	}
	want := []row{
		{"alpha 2026", "Alpha", "https://alpha.example.test/2026", "usable"},
		{"alpha old", "Alpha", "https://alpha.example.test/2020", "retired"},
		{"beta tiled", "Beta", "https://beta.example.test", "qualified"},
		{"gamma private", "Gamma", "http://127.0.0.1:1", ""},
		{"gamma readonly", "Gamma", "https://gamma.example.test", "readonly"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("log %d = %+v, want %+v", i, got[i], want[i])
		}
	}

	path := filepath.Join(t.TempDir(), "list.json")
	writeFile(t, path, data)
	sub, err := LoadLogs(Config{LogList: path})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range sub {
		names = append(names, l.Name)
	}
	if strings.Join(names, ",") != "alpha 2026,beta tiled,gamma private" {
		t.Errorf("logs used for submission: %v (retired and readonly must be left out)", names)
	}

	bad := logListJSON(t, []listEntry{{op: "X", desc: "x", url: "https://x.example.test/", pub: keys[0].pub, badID: true}})
	if _, err := ParseLogList(bad); err == nil || !strings.Contains(err.Error(), "log_id does not match") {
		t.Errorf("mismatched log_id: err = %v", err)
	}
	if _, err := ParseLogList([]byte(`{"operators": [`)); err == nil || !strings.HasPrefix(err.Error(), "ct: ") {
		t.Errorf("truncated JSON: err = %v", err)
	}
}

func TestNewPolicyFeasible(t *testing.T) {
	f := cttest.NewFakeLog(t, cttest.OK)
	if _, err := New(Config{Logs: []LogConfig{logCfg(f, "f", "op")}, MinSCTs: 2}, Options{}); err == nil || !strings.Contains(err.Error(), "only 1 logs") {
		t.Errorf("min_scts above log count: err = %v", err)
	}
	g := cttest.NewFakeLog(t, cttest.OK)
	if _, err := New(Config{Logs: []LogConfig{logCfg(f, "f", "op"), logCfg(g, "g", "op")}, MinSCTs: 2, MinOperators: 2}, Options{}); err == nil || !strings.Contains(err.Error(), "distinct operators") {
		t.Errorf("min_operators above operator count: err = %v", err)
	}
}

func TestLoadVerificationLogs(t *testing.T) {
	dir := filepath.Join("..", "testdata", "ct")
	logs, err := LoadVerificationLogs(filepath.Join(dir, "log_list.json"), []string{filepath.Join(dir, "logA.pem")})
	if err != nil {
		t.Fatal(err)
	}
	if len(logs) != 3 || logs[2].Name != "logA" || logs[2].ID != logs[0].ID {
		t.Fatalf("logs = %+v", logs)
	}
	if _, err := LoadVerificationLogs("", nil); err == nil {
		t.Error("no logs accepted")
	}
	if _, err := LoadVerificationLogs("", []string{filepath.Join(dir, "cert.pem")}); err == nil || !strings.Contains(err.Error(), "cert.pem") {
		t.Errorf("a certificate as log key: err = %v", err)
	}
}

func TestFlagLogs(t *testing.T) {
	got, err := FlagLogs([]string{"http://127.0.0.1:6962/2026/", "https://ct.example.test"}, []string{"a.pem", "b.pem"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Name != "127.0.0.1:6962/2026" || got[0].PublicKey != "a.pem" || got[1].Name != "ct.example.test" || got[0].Operator == got[1].Operator {
		t.Fatalf("FlagLogs = %+v", got)
	}
	for _, tc := range []struct {
		urls, keys []string
		want       string
	}{
		{[]string{"http://a/"}, nil, "1 --ct-log URLs but 0"},
		{[]string{"ftp://a/"}, []string{"k"}, "scheme"},
		{[]string{"http://a/"}, []string{""}, "empty"},
	} {
		if _, err := FlagLogs(tc.urls, tc.keys); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("FlagLogs(%v, %v) err = %v, want %q", tc.urls, tc.keys, err, tc.want)
		}
	}
}
