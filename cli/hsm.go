package cli

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hsmca/hsmca/hsm"
)

// The `hsmca hsm ...` commands act on a module directory (--module DIR).
// Activation lives in the memory of the process that uses the keys, so a
// command here that needs an active partition gathers the quorum itself
// (see quorum.go) and the partition is sealed again when the command exits.

func init() { commands = append(commands, newHSMCmd) }

// hsmFlags are shared by every hsm subcommand.
type hsmFlags struct {
	module string
}

func newHSMCmd(e *env) *cobra.Command {
	f := &hsmFlags{}
	cmd := &cobra.Command{
		Use:   "hsm",
		Short: "Manage the HSM module: partitions, quorum shares, keys, audit log",
		Long: `Manage the single-tenant HSM module that holds the CA's keys.

A module holds partitions (typically "root" and "issuing"); each has its own
custodians (N shares, threshold M), keys and activation state. Keys can be
used only while their partition is active, which needs M custodian shares.

Commands run here open the module directory themselves. Activation lives only
in the memory of the process that opened the module, so commands that need
an active partition (keys generate, reshare, export, import) take the
custodians' shares with --share FILE, or prompt for them on a terminal.`,
		Example: `  hsmca hsm init --module ./module --partition issuing --shares 5 --threshold 3 --out ./shares
  hsmca hsm status --module ./module
  hsmca hsm keys generate --module ./module --partition issuing --type ecdsa-p256 --label issuing-1 \
      --share shares/share-1.txt --share shares/share-2.txt --share shares/share-3.txt`,
	}
	cmd.PersistentFlags().StringVar(&f.module, "module", defaultModuleDir, "module `DIR`")
	cmd.AddCommand(
		newHSMInitCmd(e, f),
		newHSMStatusCmd(e, f),
		newHSMActivateCmd(e, f),
		newHSMSealCmd(e, f),
		newHSMKeysCmd(e, f),
		newHSMReshareCmd(e, f),
		newHSMExportCmd(e, f),
		newHSMImportCmd(e, f),
		newHSMAuditCmd(e, f),
	)
	return cmd
}

// openPartition opens the module in dir and picks partition name (see
// pickPartition); the caller closes the module.
func openPartition(dir, name string) (hsm.Module, hsm.Partition, error) {
	m, err := openModule(dir)
	if err != nil {
		return nil, nil, err
	}
	p, err := pickPartition(m, name)
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	return m, p, nil
}

// pickPartition returns the partition called name, or the only partition
// when name is empty and the module has exactly one.
func pickPartition(m hsm.Module, name string) (hsm.Partition, error) {
	names, err := m.Partitions()
	if err != nil {
		return nil, err
	}
	if name == "" {
		switch len(names) {
		case 0:
			return nil, withHint(errors.New("the module has no partitions yet"), "create one with `hsmca hsm init --partition NAME ...`")
		case 1:
			name = names[0]
		default:
			return nil, usagef("--partition is required: the module has partitions %s", strings.Join(names, ", "))
		}
	}
	p, err := m.Partition(name)
	if errors.Is(err, hsm.ErrNoPartition) {
		hint := "create it with `hsmca hsm init --partition " + name + " ...`"
		if len(names) > 0 {
			hint = "the module has partitions " + strings.Join(names, ", ") + "; or " + hint
		}
		return nil, withHint(fmt.Errorf("the module has no partition %q", name), hint)
	}
	return p, err
}

// ---- init ----

func newHSMInitCmd(e *env, f *hsmFlags) *cobra.Command {
	var (
		partition string
		policy    string
		set       shareSetFlags
		backend   backendOptions
		window    time.Duration
		maxFail   int
		lockout   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create a partition (and the module if needed) and write its N custodian shares",
		Long: `Create a partition in the module (creating the module directory on first use)
and split its secret into N shares, any M of which activate it.

One share file per custodian is written to --out (mode 0600): share-<i>.txt as
printable text, or, with --custodian NAME=age1..., NAME.age encrypted to that
custodian's age recipient (--custodian NAME alone names a plain-text share
NAME.txt). Give --custodian once per share or not at all. Hand each file to its
custodian and delete it here: nobody should hold more than one share.

init refuses a partition that exists already and never overwrites a file.`,
		Example: `  hsmca hsm init --module ./module --partition issuing --shares 5 --threshold 3 --out ./shares
  hsmca hsm init --module ./module --partition root --policy per-operation --shares 3 --threshold 2 \
      --out ./root-shares --custodian alice=age1... --custodian bob=age1... --custodian carol=age1...
  # a PKCS#11 token: its current user PIN (read once from the file) is replaced by one only the shares rebuild
  hsmca hsm init --module ./hsm11 --partition issuing --shares 5 --threshold 3 --out ./shares \
      --backend pkcs11 --token-uri 'pkcs11:token=issuing?module-path=/usr/lib/softhsm/libsofthsm2.so' --pin-file ./user.pin`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			pol, err := hsm.ParsePolicy(policy)
			if err != nil {
				return usageError{err}
			}
			if partition == "" {
				return usagef("--partition NAME is required")
			}
			if err := backend.validate(); err != nil {
				return err
			}
			if maxFail < 0 || window < 0 || lockout < 0 {
				return usagef("--collect-window, --lockout-after and --lockout must not be negative")
			}
			ss, err := set.validate()
			if err != nil {
				return err
			}
			// --out first: a directory that takes no files stops init
			// before a module or a partition exists.
			if err := ss.prepare(); err != nil {
				return err
			}
			m, created, err := openOrCreateModule(f.module, backend)
			if err != nil {
				return err
			}
			defer m.Close()
			if _, err := m.Partition(partition); err == nil {
				return withHint(fmt.Errorf("partition %s exists already in %s: %w", partition, f.module, hsm.ErrPartitionExists),
					"to replace its shares use `hsmca hsm reshare`; to start over pick another name")
			} else if !errors.Is(err, hsm.ErrNoPartition) {
				return err
			}
			shares, err := initPartition(m, hsm.InitOptions{
				Partition:       partition,
				Shares:          ss.N,
				Threshold:       ss.M,
				Policy:          pol,
				CollectWindow:   window,
				MaxFailures:     maxFail,
				LockoutDuration: lockout,
			}, backend)
			if err != nil && len(shares) == 0 {
				return err
			}
			// Shares that come back with an error are the only way into
			// a partition that exists (a PKCS#11 token whose PIN was
			// already changed; a soft module returns shares only for a
			// partition it created, its init record written first): they
			// are written all the same, and the error reported after.
			if werr := ss.write(shares); werr != nil {
				written := ss.written()
				hint := fmt.Sprintf("the partition exists; %d of its %d shares were written and %d activate it: ", written, ss.N, ss.M)
				if written >= ss.M {
					hint += "activate with them and run `hsmca hsm reshare` to make a complete set"
				} else {
					hint += "too few, so re-create the module or pick another partition name (a PKCS#11 token's security officer must first reset its user PIN)"
				}
				return withHint(errors.Join(werr, err), hint)
			}
			if err != nil {
				return withHint(err, "the shares were written; they are the only way to activate this partition")
			}
			if created {
				fmt.Fprintf(e.stdout, "created %s module %s in %s\n", m.Backend(), m.ID(), f.module)
			}
			fmt.Fprintf(e.stdout, "partition %s (%s): %d of %d shares activate it\n", partition, pol, ss.M, ss.N)
			ss.describe(e)
			if head, err := m.Audit().Head(); err == nil {
				fmt.Fprintf(e.stdout, "audit key (pin it to verify the log later): %s\n", head.PublicKey)
			}
			fmt.Fprintf(e.stdout, "give each custodian their file and remove it from this machine\n")
			return nil
		},
	}
	cmd.Flags().StringVar(&partition, "partition", "", "partition `NAME` (e.g. root, issuing)")
	cmd.Flags().StringVar(&policy, "policy", string(hsm.PolicyOnline), "activation policy: online or per-operation")
	cmd.Flags().IntVar(&set.shares, "shares", 0, "number of custodian shares `N`")
	cmd.Flags().IntVar(&set.threshold, "threshold", 0, "shares `M` needed to activate")
	cmd.Flags().StringVar(&set.out, "out", "", "`DIR` to write the share files to")
	cmd.Flags().StringArrayVar(&set.custodians, "custodian", nil, "`NAME[=AGE-RECIPIENT]` of each custodian, in share order (repeat N times)")
	cmd.Flags().DurationVar(&window, "collect-window", 0, "how long presented shares wait for the quorum (default 15m)")
	cmd.Flags().IntVar(&maxFail, "lockout-after", 0, "bad shares that lock the partition (default 5)")
	cmd.Flags().DurationVar(&lockout, "lockout", 0, "lockout window and duration (default 15m)")
	addBackendFlags(cmd, &backend)
	return cmd
}

// ---- status ----

type statusJSON struct {
	Module     string            `json:"module"`
	Backend    string            `json:"backend"`
	Dir        string            `json:"dir"`
	Audit      *hsm.AuditHead    `json:"audit,omitempty"`
	Partitions []partitionStatus `json:"partitions"`
}

type partitionStatus struct {
	hsm.PartitionStatus
	TransportKey string `json:"transport_key,omitempty"`
}

func newHSMStatusCmd(e *env, f *hsmFlags) *cobra.Command {
	var asJSON bool
	var partition string
	var t adminTarget
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show each partition's state, k of M, keys and lockout",
		Long: `Show the module and each partition: policy, state, shares presented (k of M),
number of keys, share generation, lockout, and the transport key to which
other modules export keys for it.

A module directory opened by this command is always sealed: activation lives
in the memory of the process that uses the keys.`,
		Example: `  hsmca hsm status --module ./module
  hsmca hsm status --module ./module --json | jq '.partitions[] | {name, state}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if t.remote() {
				return remoteStatus(e, &t, partition, asJSON)
			}
			m, err := openModule(f.module)
			if err != nil {
				return err
			}
			defer m.Close()
			names, err := m.Partitions()
			if err != nil {
				return err
			}
			if partition != "" {
				if _, err := pickPartition(m, partition); err != nil {
					return err
				}
				names = []string{partition}
			}
			out := statusJSON{Module: m.ID(), Backend: m.Backend(), Dir: f.module, Partitions: []partitionStatus{}}
			if head, err := m.Audit().Head(); err == nil {
				out.Audit = &head
			} else {
				return err
			}
			for _, n := range names {
				p, err := m.Partition(n)
				if err != nil {
					return err
				}
				st, err := p.Status()
				if err != nil {
					return err
				}
				ps := partitionStatus{PartitionStatus: st}
				if tk, err := p.TransportKey(); err == nil {
					ps.TransportKey = tk
				} else if !errors.Is(err, hsm.ErrUnsupported) {
					return err
				}
				out.Partitions = append(out.Partitions, ps)
			}
			if asJSON {
				return writeJSON(e.stdout, out)
			}
			fmt.Fprintf(e.stdout, "module %s (%s) in %s\n", out.Module, out.Backend, out.Dir)
			fmt.Fprintf(e.stdout, "audit log: %d records, head %s\n", out.Audit.Count, out.Audit.Hash)
			if len(out.Partitions) == 0 {
				fmt.Fprintln(e.stdout, "no partitions; create one with `hsmca hsm init`")
				return nil
			}
			tw := newTable(e.stdout)
			fmt.Fprintln(tw, "PARTITION\tPOLICY\tSTATE\tSHARES\tKEYS\tGENERATION\tLOCKOUT")
			now := time.Now()
			for _, p := range out.Partitions {
				lock := "-"
				if p.LockedUntil.After(now) {
					lock = "locked until " + p.LockedUntil.UTC().Format(time.RFC3339)
				} else if p.FailedShares > 0 {
					lock = fmt.Sprintf("%d bad share(s)", p.FailedShares)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d of %d (N=%d)\t%d\t%d\t%s\n",
					p.Name, p.Policy, p.State, p.Presented, p.Threshold, p.Shares, p.Keys, p.Generation, lock)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			for _, p := range out.Partitions {
				if p.TransportKey != "" {
					fmt.Fprintf(e.stdout, "transport key %s: %s\n", p.Name, p.TransportKey)
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON for scripts")
	cmd.Flags().StringVar(&partition, "partition", "", "show only partition `NAME`")
	addAdminFlags(cmd, &t)
	return cmd
}

// ---- activate ----

func newHSMActivateCmd(e *env, f *hsmFlags) *cobra.Command {
	var (
		partition string
		q         quorumFlags
		t         adminTarget
	)
	cmd := &cobra.Command{
		Use:   "activate",
		Short: "Present custodian shares: to a running CA (--socket, --server), or check them on a module",
		Long: `Present custodian shares to a partition.

On a module directory this checks the shares and says whether they form a
quorum: each share is verified on its own (a bad one is named), and when more
than M shares are given, every one of them is checked, M at a time. The
partition is sealed again when the command exits: activation lives in the
memory of the process that uses the keys. Bad shares count towards the
partition's lockout.

With --socket PATH (on the CA's machine) or --server URL (mutual TLS with an
operator certificate) the shares go to a running ` + "`hsmca ca serve`" + ` instead:
there they accumulate across calls, so custodians can present their shares
one at a time from their own machines. Age-encrypted shares are decrypted
locally; only the share's text travels.`,
		Example: `  hsmca hsm activate --module ./module --partition issuing \
      --share shares/share-1.txt --share shares/share-4.txt --share shares/share-5.txt
  hsmca hsm activate --socket /var/lib/hsmca/admin.sock --share my-share.txt
  # one custodian checks an age-encrypted share: "share 1 of 3 accepted" means it
  # is good; the exit status is 1 because one share is not a quorum
  hsmca hsm activate --module ./module --partition root --share alice.age --identity ~/alice.key`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if t.remote() {
				return remoteActivate(e, &t, partition, q)
			}
			m, err := openModule(f.module)
			if err != nil {
				return err
			}
			defer m.Close()
			if partition == "" {
				partition = partitionOfShares(m, q)
			}
			p, err := pickPartition(m, partition)
			if err != nil {
				return err
			}
			if len(q.shares) == 0 {
				if err := q.gather(e, p); err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "the shares form a valid quorum for partition %s\n", p.Name())
				return p.Seal()
			}
			checked, err := checkAllShares(e, p, q)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "valid quorum: %d share(s) checked for partition %s\n", checked, p.Name())
			return nil
		},
	}
	cmd.Flags().StringVar(&partition, "partition", "", "partition `NAME` (default: the partition the shares belong to)")
	addQuorumFlags(cmd, &q)
	addAdminFlags(cmd, &t)
	return cmd
}

// checkAllShares presents every share in q to p. Whenever a quorum forms,
// the partition is sealed and the next round starts; a final short round is
// completed with shares already accepted, so that every share is shown to
// combine with others into the secret. It returns the number of distinct
// share files checked.
func checkAllShares(e *env, p hsm.Partition, q quorumFlags) (int, error) {
	ids, err := loadIdentities(q.identities)
	if err != nil {
		return 0, err
	}
	type loaded struct {
		share hsm.Share
		from  string
	}
	var all []loaded
	for _, path := range q.shares {
		s, err := readShareFile(e, path, ids)
		if err != nil {
			return 0, err
		}
		all = append(all, loaded{s, path})
	}
	st, err := p.Status()
	if err != nil {
		return 0, err
	}
	if st.State == hsm.StateActive {
		if err := p.Seal(); err != nil {
			return 0, err
		}
	}
	var inRound []int
	activated := 0
	for i := 0; i < len(all); i++ {
		st, err = presentShare(e, p, all[i].share, all[i].from)
		if err != nil {
			return 0, err
		}
		inRound = append(inRound, i)
		if st.State == hsm.StateActive {
			activated++
			inRound = inRound[:0]
			if err := p.Seal(); err != nil {
				return 0, err
			}
			if i+1 < len(all) {
				fmt.Fprintf(e.stderr, "sealed again; checking the remaining shares\n")
			}
		}
	}
	if len(inRound) == 0 {
		return len(all), nil
	}
	if activated == 0 {
		return 0, quorumShortError(p.Name(), st)
	}
	// Complete the last round with shares that already activated once,
	// skipping any that is the same share index as one in this round.
	used := map[int]bool{}
	for _, i := range inRound {
		used[all[i].share.Index] = true
	}
	for i := 0; i < len(all) && st.State != hsm.StateActive; i++ {
		if used[all[i].share.Index] {
			continue
		}
		used[all[i].share.Index] = true
		st, err = presentShare(e, p, all[i].share, all[i].from+", again")
		if err != nil {
			return 0, err
		}
	}
	if st.State != hsm.StateActive {
		return 0, quorumShortError(p.Name(), st)
	}
	return len(all), p.Seal()
}

// ---- seal ----

func newHSMSealCmd(e *env, f *hsmFlags) *cobra.Command {
	var partition string
	var t adminTarget
	cmd := &cobra.Command{
		Use:   "seal",
		Short: "Seal a partition now",
		Long: `Seal a partition at once, forgetting its secret and any presented shares.

Activation lives in the memory of the process that uses the keys. A module
directory opened by this command is always sealed, so on a module directory
this only confirms the partition exists and explains where activation lives.
With --socket PATH or --server URL it seals a running ` + "`hsmca ca serve`" + ` at
once; issuance stops with the next request.`,
		Example: `  hsmca hsm seal --module ./module --partition issuing
  hsmca hsm seal --socket ./demo/admin.sock`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if t.remote() {
				return remoteSeal(e, &t, partition)
			}
			m, p, err := openPartition(f.module, partition)
			if err != nil {
				return err
			}
			defer m.Close()
			if err := p.Seal(); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "partition %s is sealed: a module directory opened here is always sealed, because activation lives only in the memory of the process that uses the keys (for example `hsmca ca serve`); nothing else to do\n", p.Name())
			return nil
		},
	}
	cmd.Flags().StringVar(&partition, "partition", "", "partition `NAME` (default: the only partition)")
	addAdminFlags(cmd, &t)
	return cmd
}
