package sync

import "github.com/prometheus/client_golang/prometheus"

// Sync modes, the mode label of berth_sync_images_total.
const (
	modeOnDemand = "ondemand"
	modePeriodic = "periodic"
)

// Kinds of upstream errors, the kind label of
// berth_sync_upstream_errors_total.
const (
	kindUnreachable = "unreachable" // connection refused, reset, timeout, DNS
	kindAuth        = "auth"        // 401 or 403
	kindRateLimit   = "ratelimit"   // 429
	kindServer      = "server"      // 5xx
	kindProtocol    = "protocol"    // other status, bad JSON, digest mismatch
)

// metrics are the syncer's collectors. The registry label is the host of
// the upstream's first URL.
type metrics struct {
	images  *prometheus.CounterVec // registry, mode
	bytes   *prometheus.CounterVec // registry
	errors  *prometheus.CounterVec // registry, kind
	fetches *prometheus.CounterVec // registry
	mounts  *prometheus.CounterVec // registry
}

func newMetrics(reg *prometheus.Registry) *metrics {
	m := &metrics{
		images: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_sync_images_total",
			Help: "Images (with everything they reference) copied from upstream registries, by mode (ondemand, periodic).",
		}, []string{"registry", "mode"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_sync_bytes_total",
			Help: "Bytes of blobs and manifests copied from upstream registries.",
		}, []string{"registry"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_sync_upstream_errors_total",
			Help: "Failed upstream requests (each attempt counts), by kind (unreachable, auth, ratelimit, server, protocol).",
		}, []string{"registry", "kind"}),
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_sync_upstream_fetches_total",
			Help: "Image copies started from upstream: one per image, whatever mirrors are tried (children and referrers are not counted).",
		}, []string{"registry"}),
		mounts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_sync_blobs_mounted_total",
			Help: "Blobs of synced images linked from another local repository instead of downloaded.",
		}, []string{"registry"}),
	}
	if reg != nil {
		reg.MustRegister(m.images, m.bytes, m.errors, m.fetches, m.mounts)
	}
	return m
}
