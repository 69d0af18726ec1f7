package gc

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	removed  *prometheus.CounterVec
	bytes    prometheus.Counter
	repos    prometheus.Counter
	duration prometheus.Histogram
}

func newMetrics(reg *prometheus.Registry) *metrics {
	m := &metrics{
		removed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_gc_removed_total", Help: "Objects removed by garbage collection, by kind (tag, manifest, blob, upload).",
		}, []string{"kind"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "berth_gc_reclaimed_bytes_total", Help: "Blob bytes reclaimed by garbage collection.",
		}),
		repos: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "berth_gc_repositories_collected_total", Help: "Repositories collected by this member.",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "berth_gc_pass_duration_seconds", Help: "Duration of garbage collection passes.",
			Buckets: prometheus.ExponentialBuckets(0.01, 4, 10),
		}),
	}
	if reg != nil {
		reg.MustRegister(m.removed, m.bytes, m.repos, m.duration)
	}
	return m
}
