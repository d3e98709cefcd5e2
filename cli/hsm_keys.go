package cli

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/hsmca/hsmca/hsm"
)

func newHSMKeysCmd(e *env, f *hsmFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "List, generate and destroy keys in a partition",
		Example: `  hsmca hsm keys list --module ./module
  hsmca hsm keys generate --module ./module --partition issuing --type ecdsa-p256 --label issuing-1 --share s1.txt --share s2.txt --share s3.txt`,
	}
	cmd.AddCommand(
		newHSMKeysListCmd(e, f),
		newHSMKeysGenerateCmd(e, f),
		newHSMKeysDestroyCmd(e, f),
		newHSMKeysTransportKeyCmd(e, f),
	)
	return cmd
}

// keyJSON is one key in `keys list --json` and `keys generate`.
type keyJSON struct {
	Partition string `json:"partition"`
	hsm.KeyInfo
	PublicKey string `json:"public_key,omitempty"` // PEM
}

func newHSMKeysListCmd(e *env, f *hsmFlags) *cobra.Command {
	var (
		partition string
		asJSON    bool
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List keys: ID, label, type, exportable, created",
		Long: `List the keys of one partition (--partition) or of all partitions. Works while
sealed; never shows private material.`,
		Example: `  hsmca hsm keys list --module ./module
  hsmca hsm keys list --module ./module --partition issuing --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := openModule(f.module)
			if err != nil {
				return err
			}
			defer m.Close()
			names := []string{partition}
			if partition == "" {
				if names, err = m.Partitions(); err != nil {
					return err
				}
			}
			out := []keyJSON{}
			for _, n := range names {
				p, err := pickPartition(m, n)
				if err != nil {
					return err
				}
				keys, err := p.Keys()
				if err != nil {
					return fmt.Errorf("partition %s: %w", n, err)
				}
				for _, k := range keys {
					kj := keyJSON{Partition: n, KeyInfo: k}
					if k.Public != nil {
						if pemText, err := publicKeyPEM(k.Public); err == nil {
							kj.PublicKey = pemText
						}
					}
					out = append(out, kj)
				}
			}
			if asJSON {
				return writeJSON(e.stdout, out)
			}
			if len(out) == 0 {
				fmt.Fprintln(e.stdout, "no keys")
				return nil
			}
			tw := newTable(e.stdout)
			fmt.Fprintln(tw, "PARTITION\tID\tLABEL\tTYPE\tEXPORTABLE\tCREATED")
			for _, k := range out {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%t\t%s\n", k.Partition, k.ID, k.Label, k.Type, k.Exportable, k.Created.UTC().Format(time.RFC3339))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&partition, "partition", "", "list only partition `NAME`")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON for scripts")
	return cmd
}

func newHSMKeysGenerateCmd(e *env, f *hsmFlags) *cobra.Command {
	var (
		partition  string
		typ        string
		label      string
		exportable bool
		asJSON     bool
		q          quorumFlags
	)
	cmd := &cobra.Command{
		Use:   "generate",
		Short: "Generate a key inside a partition (needs the quorum)",
		Long: `Generate a key inside a partition and print its ID and public key (PEM).

The private key never leaves the module. It is non-exportable unless
--exportable is given; an exportable key can only leave wrapped for another
module (hsm export). The partition must be active, so the custodians' shares
are needed (--share FILE, or a prompt on a terminal).

Key types: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096, ed25519.`,
		Example: `  hsmca hsm keys generate --module ./module --partition issuing --type ecdsa-p256 --label issuing-2026 \
      --share shares/share-1.txt --share shares/share-2.txt --share shares/share-3.txt`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			kt, err := hsm.ParseKeyType(typ)
			if err != nil {
				return usageError{err}
			}
			if label == "" {
				return usagef("--label is required")
			}
			m, p, err := openPartition(f.module, partition)
			if err != nil {
				return err
			}
			defer m.Close()
			if _, err := p.Key(label); err == nil {
				return withHint(fmt.Errorf("partition %s: %w: %s", p.Name(), hsm.ErrKeyExists, label), "pick another --label")
			}
			if err := q.gather(e, p); err != nil {
				return err
			}
			k, err := p.GenerateKey(kt, label, exportable)
			if err != nil {
				return err
			}
			pemText, err := publicKeyPEM(k.Public)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(e.stdout, keyJSON{Partition: p.Name(), KeyInfo: k, PublicKey: pemText})
			}
			fmt.Fprintf(e.stdout, "key %s generated in partition %s\nid: %s\nlabel: %s\ntype: %s\nexportable: %t\n%s",
				k.Label, p.Name(), k.ID, k.Label, k.Type, k.Exportable, pemText)
			return nil
		},
	}
	cmd.Flags().StringVar(&partition, "partition", "", "partition `NAME` (default: the only partition)")
	cmd.Flags().StringVar(&typ, "type", string(hsm.ECDSAP256), "key `TYPE`: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096, ed25519")
	cmd.Flags().StringVar(&label, "label", "", "key `LABEL`, unique in the partition")
	cmd.Flags().BoolVar(&exportable, "exportable", false, "allow wrapped export to another module (backup, replication)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON for scripts")
	addQuorumFlags(cmd, &q)
	return cmd
}

func newHSMKeysDestroyCmd(e *env, f *hsmFlags) *cobra.Command {
	var (
		partition string
		key       string
		yes       bool
		q         quorumFlags
	)
	cmd := &cobra.Command{
		Use:   "destroy",
		Short: "Destroy a key (needs the quorum; cannot be undone)",
		Long: `Destroy a key in a partition. This cannot be undone: certificates signed by the
key stay valid but nothing can sign with it again. Needs the partition's
quorum and --yes.`,
		Example: `  hsmca hsm keys destroy --module ./module --partition issuing --key issuing-old --yes \
      --share shares/share-1.txt --share shares/share-2.txt --share shares/share-3.txt`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if key == "" {
				return usagef("--key ID|LABEL is required")
			}
			if !yes {
				return withHint(usagef("destroying a key cannot be undone; refusing without --yes"), "check the key with `hsmca hsm keys list`, then add --yes")
			}
			m, p, err := openPartition(f.module, partition)
			if err != nil {
				return err
			}
			defer m.Close()
			k, err := p.Key(key)
			if err != nil {
				return keyNotFoundHint(p.Name(), key, err)
			}
			if err := q.gather(e, p); err != nil {
				return err
			}
			if err := p.DestroyKey(k.ID); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "key %s (%s) destroyed in partition %s\n", k.ID, k.Label, p.Name())
			return nil
		},
	}
	cmd.Flags().StringVar(&partition, "partition", "", "partition `NAME` (default: the only partition)")
	cmd.Flags().StringVar(&key, "key", "", "key `ID|LABEL`")
	cmd.Flags().BoolVar(&yes, "yes", false, "confirm that the key is to be destroyed")
	addQuorumFlags(cmd, &q)
	return cmd
}

func newHSMKeysTransportKeyCmd(e *env, f *hsmFlags) *cobra.Command {
	var partition string
	cmd := &cobra.Command{
		Use:   "transport-key",
		Short: "Print a partition's transport key (the --to of hsm export on the other module)",
		Long: `Print the public transport key of a partition: an age recipient to which other
modules of the same tenant export keys for it (hsm export --to). Works while
sealed.`,
		Example: `  hsmca hsm keys transport-key --module ./backup-module --partition issuing > backup.tk
  hsmca hsm export --module ./module --partition issuing --key issuing-1 --to backup.tk --out issuing-1.wrapped --share ...`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			m, p, err := openPartition(f.module, partition)
			if err != nil {
				return err
			}
			defer m.Close()
			tk, err := p.TransportKey()
			if err != nil {
				return err
			}
			fmt.Fprintln(e.stdout, tk)
			return nil
		},
	}
	cmd.Flags().StringVar(&partition, "partition", "", "partition `NAME` (default: the only partition)")
	return cmd
}

func keyNotFoundHint(partition, key string, err error) error {
	if errors.Is(err, hsm.ErrKeyNotFound) {
		return withHint(fmt.Errorf("partition %s: %w: %s", partition, err, key), "list the keys with `hsmca hsm keys list --partition "+partition+"`")
	}
	return err
}
