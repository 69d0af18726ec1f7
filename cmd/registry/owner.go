package main

import (
	"fmt"
	"io"

	"github.com/berthreg/berth/pkg/cluster"
	"github.com/berthreg/berth/pkg/config"
)

// cmdCluster implements "cluster owner REPO --config FILE".
func cmdCluster(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "owner" {
		return fmt.Errorf("%w: usage: registry cluster owner REPO --config FILE", errUsage)
	}
	fl := newFlags("cluster owner", "cluster owner REPO --config FILE", stderr)
	path := fl.String("config", "", "configuration file with the cluster section")
	// Accept flags before or after REPO.
	rest := args[1:]
	var repo string
	if len(rest) > 0 && len(rest[0]) > 0 && rest[0][0] != '-' {
		repo, rest = rest[0], rest[1:]
	}
	if err := parseFlags(fl, rest); err != nil {
		return err
	}
	if repo == "" && fl.NArg() == 1 {
		repo = fl.Arg(0)
	}
	if repo == "" || *path == "" {
		return fmt.Errorf("%w: usage: registry cluster owner REPO --config FILE", errUsage)
	}
	cfg, _, err := config.Load(*path)
	if err != nil {
		return err
	}
	if cfg.Cluster == nil {
		return fmt.Errorf("%s has no cluster section", *path)
	}
	ring, err := cluster.NewRing(cfg.Cluster.Members, []byte(cfg.Cluster.HashKey))
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "owner: %s\n", ring.Owner(repo))
	for i, m := range ring.Rank(repo) {
		fmt.Fprintf(stdout, "%d. %s\n", i+1, m)
	}
	return nil
}
