// Command registry is Berth, a scale-out OCI container registry.
//
//	registry serve [CONFIG]     serve (embedded defaults without CONFIG)
//	registry verify CONFIG      validate a configuration file
//	registry version            print the version
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

const usage = `Berth is a scale-out OCI Distribution v1.1 container registry.

Usage:
  registry serve [CONFIG]    serve the registry; without CONFIG: port 5000,
                             all interfaces, storage under ./data
  registry verify CONFIG     validate CONFIG; prints every bad field
  registry gc [--dry-run] [--repo NAME] [--json] CONFIG
                             run one garbage collection pass and print what
                             it removed (or would remove)
  registry cluster owner REPO --config FILE
                             print the member owning REPO and the failover
                             ranking
  registry version           print the version
  registry help              show this help

CONFIG is a JSON or YAML file using zot's keys (see docs/config.md and
examples/config/). Exit status: 0 success, 1 failure, 2 usage error.
`

// errUsage marks a command-line mistake (exit status 2).
var errUsage = errors.New("usage error")

// errFlags marks a flag the flag package rejected; it printed the reason.
var errFlags = errors.New("invalid flags")

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = cmdServe(args[1:], stderr)
	case "verify":
		err = cmdVerify(args[1:], stdout, stderr)
	case "gc":
		err = cmdGC(args[1:], stdout, stderr)
	case "cluster":
		err = cmdCluster(args[1:], stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "berth", buildVersion())
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "registry: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage), errors.Is(err, errFlags):
		fmt.Fprintf(stderr, "registry: %v\n", err)
		return 2
	default:
		fmt.Fprintf(stderr, "registry: %v\n", err)
		return 1
	}
}

// newFlags returns a flag set for a subcommand with its usage text.
func newFlags(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: registry %s\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		rev, dirty := "", ""
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "-dirty"
				}
			}
		}
		if rev != "" {
			if len(rev) > 12 {
				rev = rev[:12]
			}
			return "dev-" + rev + dirty + " (" + bi.GoVersion + ")"
		}
		return "dev (" + bi.GoVersion + ")"
	}
	return "dev"
}
