package main

import (
	"fmt"
	"io"

	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/config"
)

func cmdVerify(args []string, stdout, stderr io.Writer) error {
	fl := newFlags("verify", "verify CONFIG", stderr)
	if err := parseFlags(fl, args); err != nil {
		return err
	}
	if fl.NArg() != 1 {
		return fmt.Errorf("%w: verify takes exactly one CONFIG file", errUsage)
	}
	_, warnings, err := config.Load(fl.Arg(0))
	for _, w := range warnings {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	if err != nil {
		return fmt.Errorf("%s is invalid:\n%w", fl.Arg(0), err)
	}
	cfg, _, _ := config.Load(fl.Arg(0))
	if cfg.HTTP.AuthEnabled() {
		// Reads the htpasswd file and the token certificate, not only
		// checks that they exist.
		if _, err := newAuth(cfg, zerolog.Nop()); err != nil {
			return fmt.Errorf("%s is invalid:\n%w", fl.Arg(0), err)
		}
	}
	fmt.Fprintf(stdout, "%s is valid\n", fl.Arg(0))
	return nil
}
