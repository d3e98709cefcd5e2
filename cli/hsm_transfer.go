package cli

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/hsmca/hsmca/hsm"
)

// ---- reshare ----

func newHSMReshareCmd(e *env, f *hsmFlags) *cobra.Command {
	var (
		partition string
		set       shareSetFlags
		q         quorumFlags
	)
	cmd := &cobra.Command{
		Use:   "reshare",
		Short: "Replace a partition's shares with a new set (needs M old shares)",
		Long: `Make a new share set (new N, new M) for a partition from M of the current
shares. The keys stay as they are; the old shares stop working at once.

The new share files are written to --out as with hsm init (text, or
age-encrypted with --custodian NAME=age1...); --out must not hold files with
the same names. In a soft module every new file is written and synced under
its name before the partition takes the new set; if writing them fails (a
full disk, say), the partition keeps its current shares and the new files
are removed.`,
		Example: `  hsmca hsm reshare --module ./module --partition issuing --shares 7 --threshold 4 --out ./new-shares \
      --share shares/share-1.txt --share shares/share-2.txt --share shares/share-3.txt`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ss, err := set.validate()
			if err != nil {
				return err
			}
			m, p, err := openPartition(f.module, partition)
			if err != nil {
				return err
			}
			defer m.Close()
			if err := ss.prepare(); err != nil {
				return err
			}
			if err := q.gather(e, p); err != nil {
				return err
			}
			gen, err := reshare(p, ss)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "partition %s re-shared (generation %d): %d of %d shares activate it; the previous shares no longer work\n", p.Name(), gen, ss.M, ss.N)
			ss.describe(e)
			return nil
		},
	}
	cmd.Flags().StringVar(&partition, "partition", "", "partition `NAME` (default: the only partition)")
	cmd.Flags().IntVar(&set.shares, "shares", 0, "number of new shares `N`")
	cmd.Flags().IntVar(&set.threshold, "threshold", 0, "new shares `M` needed to activate")
	cmd.Flags().StringVar(&set.out, "out", "", "`DIR` to write the new share files to")
	cmd.Flags().StringArrayVar(&set.custodians, "custodian", nil, "`NAME[=AGE-RECIPIENT]` of each new custodian, in share order (repeat N times)")
	addQuorumFlags(cmd, &q)
	return cmd
}

// reshare makes a new share set for p and writes it to ss.Out, returning
// its generation. Where the backend deals the set in two steps
// (hsm.StagedResharer: soft and pkcs11), the files are durable under their names
// before the partition takes the set, and if they cannot all be written
// the partition keeps its current shares and the files are removed.
// Otherwise the set is in force before the files are written.
func reshare(p hsm.Partition, ss shareSet) (int, error) {
	sr, ok := p.(hsm.StagedResharer)
	if !ok {
		return reshareInPlace(p, ss)
	}
	pr, err := sr.PrepareReshare(ss.N, ss.M)
	if err != nil {
		return 0, err
	}
	defer pr.Discard()
	shares := pr.Shares()
	files, err := stageFiles(ss.Out, ss.Paths)
	if err != nil {
		return 0, withHint(err, "nothing changed: the current shares still work")
	}
	staged := ss
	staged.Paths = files.paths()
	err = staged.write(shares)
	if err == nil {
		err = files.place()
	}
	if err == nil {
		if err = pr.Commit(); errors.Is(err, hsm.ErrReshareIncomplete) {
			// Neither set may work now; the new files are kept.
			return 0, withHint(err, fmt.Sprintf("keep the new share files in %s as well as the previous ones: the partition may need either to be recovered (see docs/hsm.md, Re-sharing)", ss.Out))
		}
		if err != nil {
			err = fmt.Errorf("the partition did not take the new shares: %w", err)
		}
	}
	if err == nil {
		return shares[0].Generation, nil
	}
	if derr := files.discard(); derr != nil {
		return 0, withHint(errors.Join(err, fmt.Errorf("remove the new share files: %w", derr)),
			fmt.Sprintf("nothing changed: the current shares still work; delete what is left of the new share files in %s (they never worked), then run reshare again", ss.Out))
	}
	return 0, withHint(err, "nothing changed: the current shares still work, and the new share files were removed; fix the cause (free space in --out, say) and run reshare again")
}

// reshareInPlace is reshare for a backend whose new set is in force once
// Reshare returns: the files are written after, and if writing fails the
// hint says how many of the new shares exist.
func reshareInPlace(p hsm.Partition, ss shareSet) (int, error) {
	shares, err := p.Reshare(ss.N, ss.M)
	if err != nil && len(shares) == 0 {
		return 0, err
	}
	// New shares that come back with an error already replace the old
	// ones: they are written all the same.
	if werr := ss.write(shares); werr != nil {
		written := ss.written()
		hint := fmt.Sprintf("the previous shares no longer work; %d of the %d new shares were written and %d activate the partition: ", written, ss.N, ss.M)
		if written >= ss.M {
			hint += "activate with them and run reshare again to make a complete set"
		} else {
			hint += "too few, so the partition cannot be activated again (a PKCS#11 token's security officer must reset its user PIN and the partition be re-created)"
		}
		return 0, withHint(errors.Join(werr, err), hint)
	}
	if err != nil {
		return 0, withHint(err, "the new shares were written; the previous shares no longer work")
	}
	return shares[0].Generation, nil
}

// written counts the share files in place after a failed write. prepare
// made sure none existed before, and writeNewFile never leaves a partial
// one, so each is a complete share.
func (s shareSet) written() int {
	n := 0
	for _, path := range s.Paths {
		if _, err := os.Lstat(path); err == nil {
			n++
		}
	}
	return n
}

// ---- export ----

func newHSMExportCmd(e *env, f *hsmFlags) *cobra.Command {
	var (
		partition string
		key       string
		to        string
		out       string
		q         quorumFlags
	)
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Export an exportable key wrapped for another module (backup, replication)",
		Long: `Wrap an exportable key for another module's partition and write the wrapped
blob to --out (0600). The key is encrypted to the other partition's transport
key (--to: the age1... string, or a file holding it, as printed by
` + "`hsmca hsm keys transport-key`" + ` on the other module); it never leaves in
plaintext. Keys generated without --exportable are refused. Needs the quorum.`,
		Example: `  hsmca hsm keys transport-key --module ./backup --partition issuing > backup.tk
  hsmca hsm export --module ./module --partition issuing --key issuing-1 --to backup.tk --out issuing-1.wrapped \
      --share shares/share-1.txt --share shares/share-2.txt --share shares/share-3.txt`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case key == "":
				return usagef("--key ID|LABEL is required")
			case to == "":
				return usagef("--to TRANSPORT-KEY|FILE is required")
			case out == "":
				return usagef("--out FILE is required")
			}
			tk, err := readTransportKey(to)
			if err != nil {
				return err
			}
			// Before the quorum and the export's audit record.
			if err := checkNewFile(out); err != nil {
				return err
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
			if !k.Exportable {
				return withHint(fmt.Errorf("key %s (%s): %w", k.ID, k.Label, hsm.ErrNotExportable),
					"only keys generated with --exportable can leave the module, and only wrapped")
			}
			if err := q.gather(e, p); err != nil {
				return err
			}
			blob, err := p.ExportKey(k.ID, tk)
			if err != nil {
				if errors.Is(err, hsm.ErrNotExportable) {
					return withHint(err, "only keys generated with --exportable can leave the module, and only wrapped")
				}
				return err
			}
			if err := writeNewFile(out, blob); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "key %s (%s) exported wrapped to %s\n", k.ID, k.Label, out)
			return nil
		},
	}
	cmd.Flags().StringVar(&partition, "partition", "", "partition `NAME` (default: the only partition)")
	cmd.Flags().StringVar(&key, "key", "", "key `ID|LABEL` to export")
	cmd.Flags().StringVar(&to, "to", "", "the receiving partition's transport key, or a `FILE` holding it")
	cmd.Flags().StringVar(&out, "out", "", "`FILE` to write the wrapped key to")
	addQuorumFlags(cmd, &q)
	return cmd
}

// readTransportKey returns to itself when it looks like an age recipient,
// otherwise the first non-comment line of the file it names.
func readTransportKey(to string) (string, error) {
	if strings.HasPrefix(to, "age1") {
		return to, nil
	}
	data, err := readLimited(to, nil)
	if err != nil {
		return "", withHint(fmt.Errorf("transport key file %s: %w", to, err), "pass the age1... string printed by `hsmca hsm keys transport-key` on the receiving module, or a file holding it")
	}
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if !strings.HasPrefix(line, "age1") {
			return "", fmt.Errorf("transport key file %s does not hold an age1... transport key", to)
		}
		return line, nil
	}
	return "", fmt.Errorf("transport key file %s is empty", to)
}

// ---- import ----

func newHSMImportCmd(e *env, f *hsmFlags) *cobra.Command {
	var (
		partition string
		in        string
		q         quorumFlags
	)
	cmd := &cobra.Command{
		Use:   "import",
		Short: "Import a key wrapped for this module by hsm export",
		Long: `Unwrap a key exported by another module for this partition (see hsm export)
and store it here. Needs the quorum.`,
		Example: `  hsmca hsm import --module ./backup --partition issuing --in issuing-1.wrapped \
      --share backup-shares/share-1.txt --share backup-shares/share-2.txt`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if in == "" {
				return usagef("--in FILE is required")
			}
			blob, err := os.ReadFile(in)
			if err != nil {
				return fmt.Errorf("wrapped key file: %w", err)
			}
			m, p, err := openPartition(f.module, partition)
			if err != nil {
				return err
			}
			defer m.Close()
			if err := q.gather(e, p); err != nil {
				return err
			}
			k, err := p.ImportKey(blob)
			if err != nil {
				return withHint(fmt.Errorf("import %s: %w", in, err), "a wrapped key imports only into the partition whose transport key it was exported to")
			}
			fmt.Fprintf(e.stdout, "key %s (%s, %s) imported into partition %s\n", k.ID, k.Label, k.Type, p.Name())
			return nil
		},
	}
	cmd.Flags().StringVar(&partition, "partition", "", "partition `NAME` (default: the only partition)")
	cmd.Flags().StringVar(&in, "in", "", "wrapped key `FILE` written by hsm export")
	addQuorumFlags(cmd, &q)
	return cmd
}
