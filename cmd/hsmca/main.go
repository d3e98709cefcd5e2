// Command hsmca is a private certificate authority whose keys live in a
// quorum-activated HSM module. All behaviour lives in package cli.
package main

import (
	"os"

	"github.com/hsmca/hsmca/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
