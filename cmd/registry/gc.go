package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/config"
	"github.com/berthreg/berth/pkg/gc"
	"github.com/berthreg/berth/pkg/registry"
)

// gcOptions turns the storage section into collector options.
func gcOptions(sc config.StorageConfig, log zerolog.Logger) gc.Options {
	o := gc.Options{
		Delay:    sc.GCDelay.Std(),
		Interval: sc.GCInterval.Std(),
		Policies: gc.Compile(sc.Retention),
		Log:      log.With().Str("component", "gc").Logger(),
	}
	if sc.Retention != nil {
		o.UntaggedDelay = sc.Retention.Delay.Std()
		o.DryRun = sc.Retention.DryRun
	}
	return o
}

// cmdGC runs one garbage collection pass and prints what it removed.
func cmdGC(args []string, stdout, stderr io.Writer) error {
	fl := newFlags("gc", "gc [--dry-run] [--repo NAME] [--json] CONFIG", stderr)
	dry := fl.Bool("dry-run", false, "print what would be removed; remove nothing")
	repo := fl.String("repo", "", "collect only this repository")
	asJSON := fl.Bool("json", false, "print the report as JSON")
	if err := parseFlags(fl, args); err != nil {
		return err
	}
	if fl.NArg() != 1 {
		return fmt.Errorf("%w: gc takes exactly one CONFIG file", errUsage)
	}
	cfg, warnings, err := config.Load(fl.Arg(0))
	if err != nil {
		return err
	}
	for _, w := range warnings {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	log := zerolog.New(stderr).Level(zerolog.WarnLevel).With().Timestamp().Logger()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	store, err := openStorage(ctx, cfg.Storage, log)
	if err != nil {
		return err
	}
	md, err := openMeta(ctx, cfg.Storage, log)
	if err != nil {
		return fmt.Errorf("%w (with the embedded metadata store, stop the server first)", err)
	}
	defer md.Close()
	opts := gcOptions(cfg.Storage, log)
	opts.DryRun = opts.DryRun || *dry
	col := gc.New(registry.New(store, md, log), opts)
	var progress io.Writer = stderr
	if *asJSON {
		progress = nil
	}
	rep, err := col.Pass(ctx, *repo, progress)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(rep)
	}
	verb := "removed"
	if opts.DryRun {
		verb = "would remove"
	}
	for _, a := range rep.Actions {
		fmt.Fprintf(stdout, "%s %s %s %s %d\n", verb, a.Kind, a.Repo, a.Ref, a.Size)
	}
	fmt.Fprintf(stdout, "%d repositories, %d objects, %d bytes, %s\n", rep.Repos, len(rep.Actions), rep.Bytes, rep.Duration.Round(1e6))
	for _, e := range rep.Errors {
		fmt.Fprintf(stderr, "error: %s\n", e)
	}
	if len(rep.Errors) > 0 {
		return fmt.Errorf("%d repositories failed", len(rep.Errors))
	}
	return nil
}
