package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/cluster"
	"github.com/berthreg/berth/pkg/config"
	"github.com/berthreg/berth/pkg/registry"
)

// selfTimeout bounds how long a member waits for peers' names to resolve
// while finding its own entry in cluster.members.
const selfTimeout = 60 * time.Second

// newRouter builds the cluster router for a member listening on listen.
func newRouter(ctx context.Context, cc *config.ClusterConfig, listen string, metrics *prometheus.Registry, log zerolog.Logger) (*cluster.Router, error) {
	ips, err := cluster.LocalIPs()
	if err != nil {
		return nil, fmt.Errorf("cluster: list interface addresses: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, selfTimeout)
	defer cancel()
	self, err := cluster.FindSelf(sctx, cc.Members, listen, net.DefaultResolver, ips)
	if err != nil {
		return nil, err
	}
	tc, err := peerTLS(cc.TLS)
	if err != nil {
		return nil, err
	}
	return cluster.New(cluster.Options{
		Members: cc.Members,
		HashKey: []byte(cc.HashKey),
		Self:    self,
		TLS:     tc,
		Log:     log.With().Str("component", "cluster").Str("member", self).Logger(),
		Metrics: metrics,
	})
}

// peerTLS is the client TLS towards peers from cluster.tls (nil: plain HTTP).
func peerTLS(t *config.TLSConfig) (*tls.Config, error) {
	if t == nil || (t.CACert == "" && t.Cert == "") {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.CACert != "" {
		pem, err := os.ReadFile(t.CACert)
		if err != nil {
			return nil, fmt.Errorf("cluster.tls.cacert: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("cluster.tls.cacert: no certificates in %s", t.CACert)
		}
		tc.RootCAs = pool
	}
	if t.Cert != "" {
		cert, err := tls.LoadX509KeyPair(t.Cert, t.Key)
		if err != nil {
			return nil, fmt.Errorf("cluster.tls.cert/key: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// watchMembers reloads cluster.members from path on SIGHUP (hup) and when the
// file changes, and logs the repositories whose owner moved.
func watchMembers(ctx context.Context, path string, rt *cluster.Router, reg *registry.Registry, hup <-chan os.Signal, log zerolog.Logger) {
	var lastMod time.Time
	if fi, err := os.Stat(path); err == nil {
		lastMod = fi.ModTime()
	}
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		case <-tick.C:
			fi, err := os.Stat(path)
			if err != nil || !fi.ModTime().After(lastMod) {
				continue
			}
			lastMod = fi.ModTime()
		}
		reloadMembers(ctx, path, rt, reg, log)
	}
}

func reloadMembers(ctx context.Context, path string, rt *cluster.Router, reg *registry.Registry, log zerolog.Logger) {
	cfg, _, err := config.Load(path)
	if err != nil {
		log.Error().Err(err).Str("config", path).Msg("failed to reload configuration; keeping the current members")
		return
	}
	if cfg.Cluster == nil {
		log.Error().Str("config", path).Msg("reloaded configuration has no cluster section; keeping the current members")
		return
	}
	old := rt.Ring()
	if slices.Equal(old.Members(), cfg.Cluster.Members) {
		return
	}
	if err := rt.Update(cfg.Cluster.Members); err != nil {
		log.Error().Err(err).Msg("failed to apply new cluster members")
		return
	}
	moved := 0
	repos, err := reg.Catalog(ctx, "", -1)
	for _, repo := range repos {
		if from, to := old.Owner(repo), rt.Ring().Owner(repo); from != to {
			moved++
			log.Info().Str("repo", repo).Str("from", from).Str("to", to).Msg("repository owner moved")
		}
	}
	ev := log.Info()
	if err != nil {
		ev = log.Warn().Err(err)
	}
	ev.Strs("members", cfg.Cluster.Members).Int("repos_moved", moved).Int("repos", len(repos)).Msg("cluster members changed")
}
