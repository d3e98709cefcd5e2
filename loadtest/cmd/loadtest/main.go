// Command loadtest is the load generator of `hsmca loadtest` built on its
// own, so that scripts/bench-peers.sh can measure peers even while the rest
// of hsmca does not build. Same package, same flags:
//
//	loadtest acme --url https://127.0.0.1:14000/dir --clients 16 --duration 10s --http-port 5002 --insecure
//	loadtest peers --runs DIR --out bench/peers.json --svg docs/peers.svg
//
// Exit codes: 0 success, 1 the run had failed or unfinished orders, 2 bad usage.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"

	"github.com/hsmca/hsmca/loadtest"
	"github.com/spf13/pflag"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func usage() int {
	fmt.Fprintln(os.Stderr, "usage: loadtest acme --url URL [flags] | loadtest peers --runs DIR [--out FILE] [--svg FILE]")
	return 2
}

func run(args []string) int {
	if len(args) == 0 {
		return usage()
	}
	switch args[0] {
	case "acme":
		var cfg loadtest.Config
		fs := pflag.NewFlagSet("loadtest acme", pflag.ContinueOnError)
		cfg.AddFlags(fs)
		asJSON := fs.Bool("json", false, "print the report as JSON")
		if err := fs.Parse(args[1:]); err != nil {
			return 2
		}
		if err := cfg.Validate(); err != nil {
			fmt.Fprintf(os.Stderr, "loadtest: error: %v\n", err)
			return 2
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
		defer stop()
		rep, err := loadtest.Run(ctx, cfg, os.Stderr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "loadtest: error: %v\n", err)
			return 1
		}
		if *asJSON {
			b, _ := json.MarshalIndent(rep, "", "  ")
			fmt.Println(string(b))
		} else {
			_ = rep.WriteText(os.Stdout)
		}
		if rep.FailedOrders > 0 || rep.Unfinished > 0 || rep.Orders == 0 {
			return 1
		}
		return 0
	case "peers":
		fs := pflag.NewFlagSet("loadtest peers", pflag.ContinueOnError)
		runs := fs.String("runs", "", "directory of SERVER_cN_rR.json reports")
		out := fs.String("out", "", "write the results as JSON here")
		svg := fs.String("svg", "", "write the chart here")
		command := fs.String("command", "", "the command that produced the runs, recorded in the results")
		machine := fs.String("machine", "", "a description of the machine, recorded in the results")
		if err := fs.Parse(args[1:]); err != nil || *runs == "" {
			return usage()
		}
		if err := loadtest.WritePeerResults(*runs, *out, *svg, *command, *machine, os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "loadtest: error: %v\n", err)
			return 1
		}
		return 0
	}
	return usage()
}
