package cli

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"filippo.io/age"
	"github.com/spf13/cobra"

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
	cmd.AddCommand(newCeremonyRunCmd(e))
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
			t, err := runCeremony(e, args[0], moduleDir, q)
			if err != nil {
				return err
			}
			// Printed first, so that a transcript file that cannot be
			// written still leaves the transcript on stdout.
			if asJSON {
				err = writeJSON(e.stdout, t)
			} else {
				_, err = fmt.Fprint(e.stdout, t.String())
			}
			if err != nil {
				return err
			}
			if transcript != "" {
				if err := writeNewFile(transcript, []byte(t.String())); err != nil {
					return withHint(fmt.Errorf("the ceremony ran, but its transcript file was not written: %w", err),
						"the transcript is on stdout above; keep it with the ceremony records")
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&moduleDir, "module", defaultModuleDir, "HSM module `DIR`")
	cmd.Flags().StringVar(&transcript, "transcript", "", "also write the transcript to `FILE` (refuses to overwrite)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the transcript as JSON")
	addQuorumFlags(cmd, &q)
	return cmd
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
