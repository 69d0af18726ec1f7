package main

import (
	"errors"
	"flag"
	"fmt"
)

// parseFlags parses args, turning a flag mistake into errFlags (exit 2)
// and -h into flag.ErrHelp (exit 0).
func parseFlags(fs *flag.FlagSet, args []string) error {
	err := fs.Parse(args)
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return err
	}
	return fmt.Errorf("%w: %v", errFlags, err)
}
