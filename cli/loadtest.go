package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/hsmca/hsmca/loadtest"
)

func init() { commands = append(commands, newLoadtestCmd) }

func newLoadtestCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "loadtest",
		Short: "Load generators for measuring hsmca and its peers",
		Example: `  hsmca loadtest acme --url https://127.0.0.1:14000/dir --insecure --clients 16 --duration 10s --http-port 5002
  hsmca loadtest peers --runs /tmp/bench-runs --out bench/peers.json --svg docs/peers.svg`,
	}
	cmd.AddCommand(newLoadtestACMECmd(e), newLoadtestPeersCmd(e))
	return cmd
}

// errOrdersFailed makes `loadtest acme` exit 1 after printing its report.
var errOrdersFailed = errors.New("loadtest: some orders failed or did not finish (see the report)")

func newLoadtestACMECmd(e *env) *cobra.Command {
	var (
		cfg        loadtest.Config
		asJSON     bool
		cpuProfile string
	)
	cmd := &cobra.Command{
		Use:   "acme",
		Short: "Run concurrent ACME clients against any RFC 8555 server and report orders/s and latency",
		Long: `Runs --clients concurrent ACME clients, one account each, against the
directory at --url. Each client places orders (new order, challenge, finalize,
download), solving the challenge for real: an http-01 server on
127.0.0.1:--http-port, a tls-alpn-01 server on 127.0.0.1:--tls-port, and with
--dns-addr a stub DNS server that answers every A query with 127.0.0.1 and
serves the dns-01 TXT records (point the CA's resolver at it).

The run stops after --orders orders or --duration, whichever comes first, and
never runs longer than --max-time. A progress line goes to stderr every
second; the report goes to stdout (text, or JSON with --json: orders,
orders_per_sec, p50_ms, p90_ms, p99_ms, errors, client_cpu_s, ...).

Exit codes: 0 every order succeeded, 1 some failed or did not finish
(the report is printed all the same), 2 bad usage.`,
		Example: `  # Pebble, started with -dnsserver 127.0.0.1:8053 and PEBBLE_VA_NOSLEEP=1
  hsmca loadtest acme --url https://127.0.0.1:14000/dir --insecure \
      --clients 16 --duration 10s --http-port 5002 --dns-addr 127.0.0.1:8053 --json

  # a local hsmca quickstart CA: set acme.http01_port: 5002 in demo/ca.yaml
  # (it validates on port 80 by default), then start it with the stub DNS:
  #   hsmca quickstart --dir ./demo --resolver 127.0.0.1:8053
  hsmca loadtest acme --url https://127.0.0.1:8443/acme/directory --ca-bundle demo/root.pem \
      --clients 4 --orders 100 --http-port 5002 --dns-addr 127.0.0.1:8053`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := cfg.Validate(); err != nil {
				return usageError{err}
			}
			if cpuProfile != "" {
				f, err := os.Create(cpuProfile)
				if err != nil {
					return err
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
				defer pprof.StopCPUProfile()
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			rep, err := loadtest.Run(ctx, cfg, e.stderr)
			if err != nil {
				return err
			}
			if asJSON {
				b, err := json.MarshalIndent(rep, "", "  ")
				if err != nil {
					return err
				}
				fmt.Fprintln(e.stdout, string(b))
			} else if err := rep.WriteText(e.stdout); err != nil {
				return err
			}
			if rep.FailedOrders > 0 || rep.Unfinished > 0 || rep.Orders == 0 {
				return errOrdersFailed
			}
			return nil
		},
	}
	cfg.AddFlags(cmd.Flags())
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	cmd.Flags().StringVar(&cpuProfile, "cpuprofile", "", "write the generator's own CPU profile (go tool pprof) to `FILE`")
	return cmd
}

func newLoadtestPeersCmd(e *env) *cobra.Command {
	var runs, out, svg, command, machine string
	cmd := &cobra.Command{
		Use:     "peers",
		Short:   "Summarize peer benchmark runs (SERVER_cN_rR.json reports) into a table, JSON and an SVG chart",
		Example: `  hsmca loadtest peers --runs /tmp/bench-runs --out bench/peers.json --svg docs/peers.svg`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if runs == "" {
				return usagef("loadtest: --runs is required")
			}
			return loadtest.WritePeerResults(runs, out, svg, command, machine, e.stdout)
		},
	}
	cmd.Flags().StringVar(&runs, "runs", "", "directory of SERVER_cN_rR.json reports (with SERVER_cN_rR.rss peak RSS in KiB)")
	cmd.Flags().StringVar(&out, "out", "", "write the results as JSON here")
	cmd.Flags().StringVar(&svg, "svg", "", "write the chart (orders/s vs clients per server) here")
	cmd.Flags().StringVar(&command, "command", "", "the command that produced the runs, recorded in the results")
	cmd.Flags().StringVar(&machine, "machine", "", "a description of the machine, recorded in the results")
	return cmd
}
