// Command shoal is Shoal's single binary: servers, agents, the local dev
// installation and the CLI.
package main

import (
	"os"

	"github.com/shoal-dev/shoal/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}
