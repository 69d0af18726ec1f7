package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/api"
	"github.com/berthreg/berth/pkg/cluster"
	"github.com/berthreg/berth/pkg/config"
	"github.com/berthreg/berth/pkg/gc"
	"github.com/berthreg/berth/pkg/registry"
)

// shutdownGrace bounds how long in-flight requests may finish on SIGTERM.
const shutdownGrace = 30 * time.Second

// stopWait bounds the wait for handlers cut at the end of the grace
// period, and a flush of pull times.
const stopWait = 10 * time.Second

// gcStopWait bounds the wait for the collector to stop: a commit it has
// begun (30 s at most) and its last flush of pull times.
const gcStopWait = 45 * time.Second

func cmdServe(args []string, stderr io.Writer) error {
	fl := newFlags("serve", "serve [CONFIG]", stderr)
	if err := parseFlags(fl, args); err != nil {
		return err
	}
	if fl.NArg() > 1 {
		return fmt.Errorf("%w: serve takes at most one CONFIG file", errUsage)
	}
	cfg := config.Default()
	var warnings []string
	if fl.NArg() == 1 {
		var err error
		cfg, warnings, err = config.Load(fl.Arg(0))
		if err != nil {
			return err
		}
	}
	log, closeLog, err := newLogger(cfg.Log, stderr)
	if err != nil {
		return err
	}
	defer closeLog()
	for _, w := range warnings {
		log.Warn().Str("config", fl.Arg(0)).Msg(w)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return serve(ctx, cfg, fl.Arg(0), log)
}

// newLogger builds the root logger from the log section.
func newLogger(lc config.LogConfig, stderr io.Writer) (zerolog.Logger, func(), error) {
	var out io.Writer = os.Stdout
	closeFn := func() {}
	if lc.Output != "" {
		f, err := os.OpenFile(lc.Output, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return zerolog.Logger{}, nil, fmt.Errorf("log.output: %w", err)
		}
		out, closeFn = f, func() { _ = f.Close() }
	}
	level, err := zerolog.ParseLevel(lc.Level)
	if err != nil || lc.Level == "" {
		level = zerolog.InfoLevel
	}
	return zerolog.New(out).Level(level).With().Timestamp().Logger(), closeFn, nil
}

// serve runs the registry until ctx ends. path is the configuration file
// ("" for defaults), reread for cluster membership changes.
func serve(ctx context.Context, cfg *config.Config, path string, log zerolog.Logger) error {
	root := cfg.Storage.RootDirectory
	store, err := openStorage(ctx, cfg.Storage, log)
	if err != nil {
		return err
	}
	md, err := openMeta(ctx, cfg.Storage, log)
	if err != nil {
		return err
	}
	defer md.Close()

	var promReg *prometheus.Registry
	if cfg.Extensions == nil || cfg.Extensions.Metrics == nil || cfg.Extensions.MetricsEnabled() {
		promReg = prometheus.NewRegistry()
		promReg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	reg := registry.New(store, md, log.With().Str("component", "registry").Logger())
	var router *cluster.Router
	var mine func(string) bool
	if cfg.Cluster != nil {
		if router, err = newRouter(ctx, cfg.Cluster, cfg.ListenAddr(), promReg, log); err != nil {
			return err
		}
		log = log.With().Str("member", router.Self()).Logger()
		mine = router.Owns
		log.Info().Strs("members", cfg.Cluster.Members).Msg("cluster member")
	}
	start := time.Now()
	st, err := reg.Rebuild(ctx, mine)
	if err != nil {
		if ctx.Err() != nil {
			log.Info().Msg("stopped while checking metadata against storage")
			return nil // a stop asked for, not a failure
		}
		return fmt.Errorf("rebuild metadata: %w", err)
	}
	log.Info().Int("repos", st.Repos).Int("rebuilt", st.Rebuilt).Int("dropped", st.Dropped).
		Dur("dur", time.Since(start)).Msg("metadata checked against storage")

	metricsPath := ""
	if cfg.Extensions != nil && cfg.Extensions.Metrics != nil && cfg.Extensions.Metrics.Prometheus != nil {
		metricsPath = cfg.Extensions.Metrics.Prometheus.Path
	}
	opts := api.Options{Log: log, Metrics: promReg, MetricsPath: metricsPath}
	if cfg.HTTP.AuthEnabled() {
		az, err := newAuth(cfg, log)
		if err != nil {
			return err
		}
		opts.Auth = az
	}
	if cfg.Extensions.SyncEnabled() {
		syncer, err := newSyncer(cfg, router, reg, promReg, log)
		if err != nil {
			return err
		}
		defer syncer.Close() // before the stores close: copies in flight stop first
		opts.Sync = syncer
		go syncer.Run(ctx)
	}
	if router != nil {
		opts.Cluster = router
		router.Start(ctx)
		if path != "" {
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			go watchMembers(ctx, path, router, reg, hup, log)
		}
	}
	srv := api.New(reg, opts)
	gopts := gcOptions(cfg.Storage, log)
	gopts.Metrics = promReg
	if router != nil {
		gopts.Owns = router.Owns
	}
	if !cfg.Storage.GCEnabled() {
		gopts.Interval = 0 // still records pulls
	}
	// The collector outlives the drain of a shutdown: it stops after the
	// last request, recording the pulls noted in memory as it does, so
	// retention loses none of them.
	gcCtx, stopGC := context.WithCancel(context.WithoutCancel(ctx))
	gcDone := make(chan struct{})
	go func() {
		defer close(gcDone)
		gc.New(reg, gopts).Run(gcCtx)
	}()
	defer func() {
		stopGC()
		select {
		case <-gcDone:
		case <-time.After(gcStopWait):
			log.Warn().Msg("gave up waiting for the collector to stop and record pull times")
		}
	}()

	ln, err := net.Listen("tcp", cfg.ListenAddr())
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.ListenAddr(), err)
	}
	defer ln.Close() // on early returns; Serve closes it otherwise
	srv.SetLimits(api.Limits{
		UploadsPerClient: cfg.HTTP.MaxUploadsPerClient,
		ReadIdle:         cfg.HTTP.ReadIdleTimeout.Std(),
		WriteIdle:        cfg.HTTP.WriteIdleTimeout.Std(),
	})
	// Requests get a context of their own. SIGTERM (ctx) stops new
	// connections and background work, but pulls and pushes in flight go
	// on; they are cancelled only when the grace period is over.
	reqCtx, cutRequests := context.WithCancel(context.WithoutCancel(ctx))
	defer cutRequests()
	// No ReadTimeout or WriteTimeout: they would cut long transfers. The
	// idle timeouts above bound stalled bodies and responses instead.
	hs := &http.Server{
		Handler:           srv,
		ReadHeaderTimeout: cfg.HTTP.ReadHeaderTimeout.Std(),
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    cfg.HTTP.MaxHeaderBytes,
		BaseContext:       func(net.Listener) context.Context { return reqCtx },
		ErrorLog:          nil,
	}
	scheme := "http"
	if cfg.HTTP.TLSEnabled() {
		scheme = "https"
		tc, err := serverTLS(cfg.HTTP.TLS)
		if err != nil {
			return err
		}
		hs.TLSConfig = tc
	}
	srv.SetReady(true)
	log.Info().Str("addr", ln.Addr().String()).Str("scheme", scheme).Str("root", root).
		Str("version", buildVersion()).Msg("serving")

	errc := make(chan error, 1)
	go func() {
		if scheme == "https" {
			errc <- hs.ServeTLS(ln, cfg.HTTP.TLS.Cert, cfg.HTTP.TLS.Key)
		} else {
			errc <- hs.Serve(ln)
		}
	}()
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	case <-ctx.Done():
	}
	log.Info().Msg("shutting down")
	srv.SetReady(false)
	// Record the pulls noted so far now, in case the drain is cut short
	// (a SIGKILL after Kubernetes' grace period); those of the drain are
	// recorded when the collector stops.
	flushed := make(chan struct{})
	go func() {
		defer close(flushed)
		fctx, cancel := context.WithTimeout(context.Background(), stopWait)
		defer cancel()
		if err := reg.FlushPulls(fctx); err != nil {
			log.Warn().Err(err).Msg("failed to record pull times at shutdown; retrying after the drain")
		}
	}()
	// Whatever happens, this flush ends (bounded by stopWait) before the
	// collector's last one and before the stores close.
	defer func() { <-flushed }()
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		log.Warn().Err(err).Dur("grace", shutdownGrace).Msg("requests still in flight after the grace period are cut")
		cutRequests()
		_ = hs.Close()
		// Close does not wait for handlers. Cut ones return promptly, but
		// commits run detached from their request: let them end before
		// the stores close.
		if !srv.Wait(stopWait) {
			log.Warn().Dur("waited", stopWait).Msg("handlers still running as the stores close")
		}
	}
	return nil
}

// serverTLS is TLS 1.2+; with a CA it requires client certificates signed by it.
func serverTLS(t *config.TLSConfig) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.CACert != "" {
		pem, err := os.ReadFile(t.CACert)
		if err != nil {
			return nil, fmt.Errorf("http.tls.cacert: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("http.tls.cacert: no certificates in %s", t.CACert)
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return tc, nil
}
