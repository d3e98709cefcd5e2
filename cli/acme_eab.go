package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/hsmca/hsmca/acme"
	"github.com/hsmca/hsmca/server"
	"github.com/hsmca/hsmca/store"
)

func init() { commands = append(commands, newACMECmd) }

// eabAdmin implements server.EABAdmin over the ACME store.
type eabAdmin struct{ st *store.Store }

var _ server.EABAdmin = eabAdmin{}

func (a eabAdmin) Create(ctx context.Context, label string) (string, string, error) {
	return acme.CreateEAB(ctx, a.st, label)
}

func (a eabAdmin) List(ctx context.Context) ([]server.EABKey, error) {
	infos, err := acme.ListEAB(ctx, a.st)
	if err != nil {
		return nil, err
	}
	out := make([]server.EABKey, 0, len(infos))
	for _, i := range infos {
		out = append(out, server.EABKey{KeyID: i.KeyID, Label: i.Label, Created: i.Created, Revoked: i.Revoked, Account: i.AccountID})
	}
	return out, nil
}

func (a eabAdmin) Revoke(ctx context.Context, keyID string) error {
	err := acme.RevokeEAB(ctx, a.st, keyID)
	if errors.Is(err, acme.ErrNotFound) {
		return fmt.Errorf("%w: %s", server.ErrUnknownEAB, keyID)
	}
	return err
}

// eabTarget is where the eab commands act: the store of a stopped CA
// (--config) or a running one through its admin API (--socket, --server).
type eabTarget struct {
	configPath string
	admin      adminTarget
}

// run opens the store locally or calls the admin API.
func (t *eabTarget) local(fn func(eabAdmin) error) error {
	cfg, err := LoadConfig(t.configPath)
	if err != nil {
		return err
	}
	st, err := openStore(cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	return fn(eabAdmin{st: st})
}

func addEABFlags(cmd *cobra.Command, t *eabTarget) {
	addConfigFlag(cmd, &t.configPath)
	addAdminFlags(cmd, &t.admin)
}

func newACMECmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "acme",
		Short:   "Manage the ACME server's external account binding keys",
		Example: `  hsmca acme eab create --socket ./demo/admin.sock --label team-payments`,
	}
	eab := &cobra.Command{
		Use:   "eab",
		Short: "Create, list and revoke ACME external account binding (EAB) keys",
		Long: `External account binding (RFC 8555 §7.3.4) ties a new ACME account to a key
the CA handed out. With acme.external_account_required in ca.yaml, accounts
without a valid binding are refused. Keys are kept in the CA's store; these
commands act on a stopped CA (--config) or a running one (--socket, --server).`,
		Example: `  hsmca acme eab create --socket ./demo/admin.sock --label team-payments
  hsmca acme eab list --socket ./demo/admin.sock
  hsmca acme eab revoke KEY_ID --socket ./demo/admin.sock`,
	}
	eab.AddCommand(newEABCreateCmd(e), newEABListCmd(e), newEABRevokeCmd(e))
	cmd.AddCommand(eab)
	return cmd
}

func newEABCreateCmd(e *env) *cobra.Command {
	var (
		t      eabTarget
		label  string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create an EAB key; the HMAC key is shown once",
		Example: `  hsmca acme eab create --socket ./demo/admin.sock --label team-payments
  # then, for the account holder:
  certbot register --server URL --eab-kid KEY_ID --eab-hmac-key HMAC_KEY ...`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var out server.EABCreated
			if t.admin.remote() {
				c, err := t.admin.client()
				if err != nil {
					return err
				}
				if err := c.do("POST", "/admin/acme/eab", server.EABCreateRequest{Label: label}, &out); err != nil {
					return err
				}
			} else {
				err := t.local(func(a eabAdmin) error {
					var err error
					out.KeyID, out.HMACKey, err = a.Create(context.Background(), label)
					return err
				})
				if err != nil {
					return err
				}
			}
			if asJSON {
				return writeJSON(e.stdout, out)
			}
			fmt.Fprintf(e.stdout, "key id:   %s\nhmac key: %s\n", out.KeyID, out.HMACKey)
			fmt.Fprintln(e.stderr, "hint: the HMAC key is shown only now; hand it to the account holder over a safe channel")
			return nil
		},
	}
	addEABFlags(cmd, &t)
	cmd.Flags().StringVar(&label, "label", "", "a `LABEL` to recognise the key by (e.g. the team)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newEABListCmd(e *env) *cobra.Command {
	var (
		t      eabTarget
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List EAB keys (never their secrets)",
		Example: `  hsmca acme eab list --config ca.yaml --json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var keys []server.EABKey
			if t.admin.remote() {
				c, err := t.admin.client()
				if err != nil {
					return err
				}
				if err := c.do("GET", "/admin/acme/eab", nil, &keys); err != nil {
					return err
				}
			} else {
				err := t.local(func(a eabAdmin) error {
					var err error
					keys, err = a.List(context.Background())
					return err
				})
				if err != nil {
					return err
				}
			}
			if keys == nil {
				keys = []server.EABKey{}
			}
			if asJSON {
				return writeJSON(e.stdout, keys)
			}
			tw := newTable(e.stdout)
			fmt.Fprintln(tw, "KEY ID\tLABEL\tCREATED\tREVOKED\tACCOUNT")
			for _, k := range keys {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\n", k.KeyID, k.Label, k.Created.UTC().Format("2006-01-02 15:04"), k.Revoked, k.Account)
			}
			return tw.Flush()
		},
	}
	addEABFlags(cmd, &t)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newEABRevokeCmd(e *env) *cobra.Command {
	var t eabTarget
	cmd := &cobra.Command{
		Use:   "revoke KEY_ID",
		Short: "Revoke an EAB key: no new account can bind with it",
		Example: `  hsmca acme eab revoke 3kq9...Zx --socket ./demo/admin.sock

  # a key ID that starts with "-" (keys made before hsmca stopped drawing
  # them) goes after "--"
  hsmca acme eab revoke --socket ./demo/admin.sock -- -okEWL...a`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if t.admin.remote() {
				c, err := t.admin.client()
				if err != nil {
					return err
				}
				if err := c.do("POST", "/admin/acme/eab/revoke", server.EABRevokeRequest{KeyID: args[0]}, nil); err != nil {
					return err
				}
			} else {
				err := t.local(func(a eabAdmin) error { return a.Revoke(context.Background(), args[0]) })
				if errors.Is(err, server.ErrUnknownEAB) {
					return usageError{withHint(err, "list the keys with `hsmca acme eab list`")}
				}
				if err != nil {
					return err
				}
			}
			fmt.Fprintf(e.stdout, "revoked EAB key %s\n", args[0])
			return nil
		},
	}
	addEABFlags(cmd, &t)
	return cmd
}
