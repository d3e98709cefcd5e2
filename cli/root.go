// Package cli holds hsmca's command tree. It parses flags and configuration,
// wires the packages together (hsm, ca, acme, store, server) and prints
// results; it holds no business logic of its own.
//
// Exit codes: 0 success, 1 the operation failed, 2 bad usage or input.
package cli

import (
	"errors"
	"fmt"
	"io"
	"regexp"

	"github.com/spf13/cobra"
)

// Exit codes (documented in README.md).
const (
	ExitOK    = 0
	ExitFail  = 1
	ExitUsage = 2
)

// usageError marks an error caused by bad flags or input (exit code 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// hintError carries a "hint:" line printed after the error.
type hintError struct {
	err  error
	hint string
}

func (e hintError) Error() string { return e.err.Error() }
func (e hintError) Unwrap() error { return e.err }

// withHint attaches a hint that tells the user what to do next.
func withHint(err error, hint string) error {
	if err == nil {
		return nil
	}
	return hintError{err: err, hint: hint}
}

// usagef returns a usage error (exit code 2).
func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// env is what every command reads and writes instead of the process globals,
// so that tests can run commands in-process.
type env struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

// newRoot builds the whole command tree.
func newRoot(e *env) *cobra.Command {
	root := &cobra.Command{
		Use:           "hsmca",
		Short:         "A private CA whose keys live in a quorum-activated HSM module",
		SilenceUsage:  true,
		SilenceErrors: true,
		Example: `  hsmca quickstart --dir ./demo        # a working demo CA on this machine
  hsmca hsm init --module ./module --partition issuing --shares 5 --threshold 3 --out ./shares
  hsmca ceremony run root.yaml --share shares/share-1.txt --share shares/share-2.txt`,
	}
	// Flag parsing errors (unknown flag, bad value, missing argument) are
	// usage errors, whichever command they come from.
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.SetIn(e.stdin)
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	for _, add := range commands {
		root.AddCommand(add(e))
	}
	addCompletionExamples(root)
	return root
}

// completionExamples are the examples of cobra's default completion
// command and its shells: every command's --help shows one.
var completionExamples = map[string]string{
	"completion": `  source <(hsmca completion bash)          # this shell only
  hsmca completion zsh > "${fpath[1]}/_hsmca"`,
	"bash":       `  hsmca completion bash > /etc/bash_completion.d/hsmca`,
	"zsh":        `  hsmca completion zsh > "${fpath[1]}/_hsmca"`,
	"fish":       `  hsmca completion fish > ~/.config/fish/completions/hsmca.fish`,
	"powershell": `  hsmca completion powershell | Out-String | Invoke-Expression`,
}

// addCompletionExamples creates cobra's completion command now (Execute
// would add it later) so that it and its subcommands carry examples too.
func addCompletionExamples(root *cobra.Command) {
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() != "completion" {
			continue
		}
		c.Example = completionExamples["completion"]
		for _, sub := range c.Commands() {
			sub.Example = completionExamples[sub.Name()]
		}
	}
}

// commands lists the top-level command constructors; each lives in its own
// file (hsm.go, ceremony.go, cert.go, serve.go, ...).
var commands []func(*env) *cobra.Command

// Main runs hsmca with args and returns the process exit code.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr}
	root := newRoot(e)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return ExitOK
	}
	fmt.Fprintf(stderr, "hsmca: error: %v\n", err)
	var h hintError
	if errors.As(err, &h) && h.hint != "" {
		fmt.Fprintf(stderr, "hint: %s\n", h.hint)
	}
	var u usageError
	if errors.As(err, &u) || isCobraUsage(err) {
		return ExitUsage
	}
	return ExitFail
}

// cobraUsage matches the messages of cobra's own argument and flag
// errors (args.go, command.go, flag_groups.go), which cobra returns
// unwrapped, so each is matched from the start of the message. Flag
// parsing errors reach root's FlagErrorFunc and are marked there.
var cobraUsage = regexp.MustCompile(`^(unknown command "|invalid argument ".*" for "|requires at least \d+ arg|accepts (at most |between )?\d+ |required flag\(s\) "|if any flags in the group \[|at least one of the flags in the group \[|unknown flag: |unknown shorthand flag: |flag needs an argument: |bad flag syntax: )`)

// isCobraUsage recognises cobra's own flag and argument errors, and
// nothing else: a runtime error that merely contains "invalid argument"
// (EINVAL) is a failure, not bad usage.
func isCobraUsage(err error) bool {
	return cobraUsage.MatchString(err.Error())
}
