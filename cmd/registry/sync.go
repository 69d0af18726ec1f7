package main

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/cluster"
	"github.com/berthreg/berth/pkg/config"
	"github.com/berthreg/berth/pkg/registry"
	berthsync "github.com/berthreg/berth/pkg/sync"
)

// newSyncer builds the sync extension: on demand through api.Options.Sync,
// periodic through Run. In a cluster, periodic sync covers only the
// repositories this member owns, and URLs naming this member are dropped.
func newSyncer(cfg *config.Config, router *cluster.Router, reg *registry.Registry, promReg *prometheus.Registry, log zerolog.Logger) (*berthsync.Syncer, error) {
	deps := berthsync.Deps{Registry: reg, Self: []string{cfg.ListenAddr()}, Log: log.With().Str("component", "sync").Logger(), Metrics: promReg}
	if router != nil {
		deps.Owns = router.Owns
		deps.Self = append(deps.Self, router.Self())
	}
	return berthsync.New(cfg.Extensions.Sync, deps)
}
