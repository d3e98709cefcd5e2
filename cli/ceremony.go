package cli

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"filippo.io/age"
	"github.com/spf13/cobra"

	"github.com/hsmca/hsmca/ca"
	"github.com/hsmca/hsmca/ca/ceremony"
	"github.com/hsmca/hsmca/hsm"
)

func init() { commands = append(commands, newCeremonyCmd) }

func newCeremonyCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ceremony",
		Short: "Run key ceremonies from YAML files (key, root, intermediate, cross-sign, crl)",
		Example: `  hsmca ceremony run root.yaml --module ./module \
      --share shares/root/share-1.txt --share shares/root/share-2.txt --share shares/root/share-3.txt
  # a complete ceremony script: testdata/ceremony/run.sh`,
	}
	cmd.AddCommand(newCeremonyRunCmd(e), newCeremonyServerCertCmd(e))
	return cmd
}

func newCeremonyRunCmd(e *env) *cobra.Command {
	var (
		moduleDir  string
		q          quorumFlags
		transcript string
		asJSON     bool
	)
	cmd := &cobra.Command{
		Use:   "run FILE.yaml",
		Short: "Run one ceremony: gather each partition's quorum, sign, verify, reseal, print the transcript",
		Long: `Runs the ceremony a YAML file describes (kinds: key, root, intermediate,
cross-sign, crl). The file is decoded strictly: an unknown field is an error.
Each partition the ceremony needs is activated with the custodians' shares
(--share FILE, repeatable, shares of several partitions may be mixed: each is
presented to the partition it belongs to; or prompts on a terminal), for just
the signatures the step needs, and sealed again afterwards. Outputs are never
overwritten. Every certificate and CRL is linted before the module signs it
and verified after. The transcript names the ceremony file's SHA-256, the keys,
the outputs' fingerprints and the audit-log positions before and after.

Relative paths in the ceremony file are taken from the working directory.`,
		Example: `  hsmca ceremony run root.yaml --module ./module \
      --share shares/root/share-1.txt --share shares/root/share-2.txt --share shares/root/share-3.txt \
      --transcript root.transcript.txt`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// An existing --transcript is refused before the module is
			// touched: found only afterwards, it would leave keys and
			// outputs made by a ceremony whose transcript was not written.
			// So is a directory that does not exist or is not a directory.
			if transcript != "" {
				if _, err := os.Lstat(transcript); err == nil {
					return usageError{withHint(fmt.Errorf("--transcript %s already exists; refusing to overwrite it", transcript),
						"choose another --transcript path; the ceremony has not run")}
				} else if !errors.Is(err, os.ErrNotExist) {
					return fmt.Errorf("--transcript: %w", err)
				}
				if fi, err := os.Stat(filepath.Dir(transcript)); err != nil || !fi.IsDir() {
					return usageError{withHint(fmt.Errorf("--transcript %s: directory %s does not exist", transcript, filepath.Dir(transcript)),
						"create the directory first; the ceremony has not run")}
				}
			}
			t, runErr := runCeremony(e, args[0], moduleDir, q)
			if t == nil {
				return ceremonyError(runErr, moduleDir)
			}
			// A failed ceremony's transcript is a record too (it names a
			// key generated before the failure): printed and written like
			// a successful one. Printed first, so that a transcript file
			// that cannot be written still leaves it on stdout.
			var err error
			if asJSON {
				err = writeJSON(e.stdout, t)
			} else {
				_, err = fmt.Fprint(e.stdout, t.String())
			}
			if err != nil && runErr == nil {
				return err
			}
			if transcript != "" {
				if err := writeNewFile(transcript, []byte(t.String())); err != nil {
					if runErr != nil {
						fmt.Fprintf(e.stderr, "hsmca: the transcript file %s was not written either: %v\n", transcript, err)
					} else {
						return withHint(fmt.Errorf("the ceremony ran, but its transcript file was not written: %w", err),
							"the transcript is on stdout above; keep it with the ceremony records")
					}
				}
			}
			return ceremonyError(runErr, moduleDir)
		},
	}
	cmd.Flags().StringVar(&moduleDir, "module", defaultModuleDir, "HSM module `DIR`")
	cmd.Flags().StringVar(&transcript, "transcript", "", "also write the transcript to `FILE` (refuses to overwrite)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the transcript as JSON")
	addQuorumFlags(cmd, &q)
	return cmd
}

// newCeremonyServerCertCmd issues the server's own TLS certificate, the
// last step of setting up a CA after its ceremonies (testdata/ceremony/run.sh),
// so that `ca serve` starts with the config as written.
func newCeremonyServerCertCmd(e *env) *cobra.Command {
	var (
		configPath, certPath, keyPath string
		names                         []string
		q                             quorumFlags
	)
	cmd := &cobra.Command{
		Use:   "server-cert --name HOST",
		Short: "Issue the TLS certificate that `ca serve` presents (after the ceremonies)",
		Long: `Issues the certificate that ` + "`hsmca ca serve`" + ` presents on its HTTPS listener:
a new P-256 key made here, certified by the config's default issuer under
its server profile for every --name (DNS names and IP addresses). The chain
(leaf and intermediates) goes to the config's server.tls_cert and the key
(PKCS #8, mode 0600) to server.tls_key, or to --cert and --key; neither is
overwritten. The key stays outside the module on purpose: the server must
serve while sealed. The names are checked against the server profile and
the name policy before any quorum is asked for. The issuing partition's
quorum comes from --share files or prompts (a per-operation partition is
activated for the signatures the profile takes: two with Certificate
Transparency), and the partition is sealed again afterwards.`,
		Example: `  hsmca ceremony server-cert --config ca.yaml --name pki.svc.corp --name 10.0.0.5 \
      --share shares/issuing/share-1.txt --share shares/issuing/share-2.txt --share shares/issuing/share-3.txt`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return issueServerCert(e, configPath, certPath, keyPath, names, q)
		},
	}
	addConfigFlag(cmd, &configPath)
	cmd.Flags().StringArrayVar(&names, "name", nil, "DNS name or IP address `HOST` of the server (repeatable)")
	cmd.Flags().StringVar(&certPath, "cert", "", "write the certificate chain to `FILE` (default: the config's server.tls_cert)")
	cmd.Flags().StringVar(&keyPath, "key", "", "write the private key to `FILE`, mode 0600 (default: the config's server.tls_key)")
	addQuorumFlags(cmd, &q)
	return cmd
}

// issueServerCert issues the server profile certificate for names with the
// default issuer of the config at configPath and writes the chain and a new
// key (0600) to certPath and keyPath, by default the config's
// server.tls_cert and server.tls_key.
func issueServerCert(e *env, configPath, certPath, keyPath string, names []string, q quorumFlags) error {
	if len(names) == 0 {
		return usagef("--name is required: a DNS name or IP address that clients reach the server at (repeatable)")
	}
	cfg, err := LoadConfig(configPath)
	if err != nil {
		return err
	}
	if certPath == "" && cfg.Server.TLSCert != "" {
		certPath = cfg.Path(cfg.Server.TLSCert)
	}
	if keyPath == "" && cfg.Server.TLSKey != "" {
		keyPath = cfg.Path(cfg.Server.TLSKey)
	}
	if certPath == "" || keyPath == "" {
		return usageError{withHint(errors.New("no output: the config names no server.tls_cert and server.tls_key"),
			"name them in the config (what `ca serve` reads), or pass --cert and --key")}
	}
	// Refused before the module is touched.
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Lstat(p); err == nil {
			return usageError{withHint(fmt.Errorf("%s already exists; refusing to overwrite it", p), "move it away first; nothing was issued")}
		}
	}
	req := &x509.CertificateRequest{}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			req.IPAddresses = append(req.IPAddresses, ip)
		} else {
			req.DNSNames = append(req.DNSNames, n)
		}
	}
	if len(req.DNSNames) > 0 {
		req.Subject.CommonName = req.DNSNames[0]
	}
	key, csr, err := newKeyAndCSR(req)
	if err != nil {
		return err
	}
	l, err := openLocalCA(configPath)
	if err != nil {
		return err
	}
	defer l.Close()
	ic, err := l.issuerConfig("")
	if err != nil {
		return err
	}
	// A name the server profile or the name policy refuses is refused
	// before any custodian is asked for a share and before the module
	// records an activation, as `cert issue` does.
	if err := l.ca.CheckCSR("server", csr); err != nil {
		return issueError(err)
	}
	if err := os.MkdirAll(filepath.Dir(keyPath), 0o700); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(certPath), 0o755); err != nil {
		return err
	}
	// A server profile with Certificate Transparency takes two signatures
	// (precertificate and certificate) of a per-operation issuer.
	sigs, err := l.ca.IssueSignatures("server")
	if err != nil {
		return err
	}
	if err := l.activateIssuerFor(e, "", q, sigs); err != nil {
		return err
	}
	if p, err := l.m.Partition(ic.Partition); err == nil {
		defer p.Seal()
	}
	cert, err := l.ca.Issue(context.Background(), ca.IssueRequest{CSR: csr, Profile: "server"})
	if err != nil {
		return issueError(err)
	}
	if err := writeKeyAndChain(key, cert, certPath, keyPath); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "server certificate for %s by %s: %s (key %s)\n", strings.Join(names, ", "), ic.Name, certPath, keyPath)
	return nil
}

// ceremonyError adds what to do to a failed ceremony's error: remove the
// key it left in the module, or put the root key where it belongs.
func ceremonyError(err error, moduleDir string) error {
	var g *ceremony.GeneratedKeyError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &g):
		hint := fmt.Sprintf("the transcript above names the key; remove it with `hsmca hsm keys destroy --module %s --partition %s --key %s --yes` and the partition's shares, "+
			"or certify it in the corrected ceremony file with key.existing: true", moduleDir, g.Partition, g.Key.ID)
		var h hintError
		if errors.As(err, &h) && h.hint != "" {
			hint = h.hint + "\nhint: " + hint
		}
		return withHint(err, hint)
	case errors.Is(err, ceremony.ErrNotPerOperation):
		return usageError{withHint(err, "make the root key in a per-operation partition (`hsmca hsm init --partition root --policy per-operation ...`); nothing was generated or signed")}
	}
	return err
}

// runCeremony loads the ceremony file at path and runs it against the module
// in moduleDir, gathering quorums from q. It is what `ceremony run` does and
// what quickstart calls for its demo ceremonies.
func runCeremony(e *env, path, moduleDir string, q quorumFlags) (*ceremony.Transcript, error) {
	f, err := ceremony.Load(path)
	if err != nil {
		return nil, usageError{err}
	}
	m, err := openModule(moduleDir)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	keys, err := newModuleKeys(e, m, q)
	if err != nil {
		return nil, err
	}
	t, err := ceremony.Run(context.Background(), f, ceremony.Options{Keys: keys, Progress: e.stderr})
	if err != nil {
		return t, err
	}
	return t, nil
}

// moduleKeys implements ceremony.Keys over an hsm.Module, gathering quorums
// from share files (each share goes to the partition it names) or prompts.
type moduleKeys struct {
	e      *env
	m      hsm.Module
	ids    []age.Identity
	shares []namedShare
	given  bool // --share was used at all
}

type namedShare struct {
	path  string
	share hsm.Share
}

var _ ceremony.Keys = (*moduleKeys)(nil)

func newModuleKeys(e *env, m hsm.Module, q quorumFlags) (*moduleKeys, error) {
	ids, err := loadIdentities(q.identities)
	if err != nil {
		return nil, err
	}
	k := &moduleKeys{e: e, m: m, ids: ids, given: len(q.shares) > 0}
	for _, p := range q.shares {
		s, err := readShareFile(e, p, ids)
		if err != nil {
			return nil, err
		}
		k.shares = append(k.shares, namedShare{p, s})
	}
	return k, nil
}

func (k *moduleKeys) partition(name string) (hsm.Partition, error) {
	p, err := k.m.Partition(name)
	if errors.Is(err, hsm.ErrNoPartition) {
		return nil, withHint(fmt.Errorf("partition %s: %w", name, err), "create it first with `hsmca hsm init --partition "+name+" ...`")
	}
	return p, err
}

// Activate presents the shares that belong to partition until it is active.
func (k *moduleKeys) Activate(partition string, signatures int) error {
	p, err := k.partition(partition)
	if err != nil {
		return err
	}
	st, err := p.Status()
	if err != nil {
		return err
	}
	if st.State == hsm.StateActive {
		return nil
	}
	if st.Policy == hsm.PolicyPerOperation {
		if err := p.SetOperationSignatures(signatures); err != nil {
			return err
		}
	}
	if !k.given {
		return gatherQuorum(k.e, p, nil, nil)
	}
	for _, ns := range k.shares {
		if ns.share.Partition != partition {
			continue
		}
		st, err = presentShare(k.e, p, ns.share, ns.path)
		if err != nil {
			return err
		}
		if st.State == hsm.StateActive {
			return nil
		}
	}
	return quorumShortError(partition, st)
}

func (k *moduleKeys) GenerateKey(partition, keyType, label string) (ceremony.KeyRef, error) {
	p, err := k.partition(partition)
	if err != nil {
		return ceremony.KeyRef{}, err
	}
	t, err := hsm.ParseKeyType(keyType)
	if err != nil {
		return ceremony.KeyRef{}, err
	}
	info, err := p.GenerateKey(t, label, false)
	if err != nil {
		return ceremony.KeyRef{}, err
	}
	return keyRef(info), nil
}

func (k *moduleKeys) Key(partition, key string) (ceremony.KeyRef, error) {
	p, err := k.partition(partition)
	if err != nil {
		return ceremony.KeyRef{}, err
	}
	info, err := p.Key(key)
	if err != nil {
		return ceremony.KeyRef{}, err
	}
	return keyRef(info), nil
}

// PartitionPolicy is the partition's hsm.Policy; the root ceremony
// refuses a partition that is not per-operation.
func (k *moduleKeys) PartitionPolicy(partition string) (string, error) {
	p, err := k.partition(partition)
	if err != nil {
		return "", err
	}
	st, err := p.Status()
	if err != nil {
		return "", err
	}
	return string(st.Policy), nil
}

func (k *moduleKeys) Signer(partition, key string) (crypto.Signer, error) {
	p, err := k.partition(partition)
	if err != nil {
		return nil, err
	}
	return p.Signer(key)
}

func (k *moduleKeys) Seal(partition string) error {
	p, err := k.partition(partition)
	if err != nil {
		return err
	}
	return p.Seal()
}

func (k *moduleKeys) AuditHead() (uint64, string, error) {
	h, err := k.m.Audit().Head()
	return h.Count, h.Hash, err
}

func keyRef(info hsm.KeyInfo) ceremony.KeyRef {
	return ceremony.KeyRef{ID: info.ID, Label: info.Label, Type: string(info.Type), Public: info.Public}
}
