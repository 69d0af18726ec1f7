package config

import (
	"fmt"
	"strings"
)

// DefaultMetricsPath is the default extensions.metrics.prometheus.path.
const DefaultMetricsPath = "/metrics"

// ExtensionsConfig holds the optional features Berth implements. zot's other
// extensions (search, ui, scrub, lint, trust, mgmt, apikey, events) are
// accepted with a warning and ignored.
type ExtensionsConfig struct {
	// Sync mirrors images from upstream registries. Nil means off.
	Sync *SyncConfig `json:"sync,omitempty"`
	// Metrics exposes Prometheus metrics. Nil means off.
	Metrics *MetricsConfig `json:"metrics,omitempty"`
}

// SyncConfig is zot's sync extension.
type SyncConfig struct {
	// Enable turns sync on. Default true when the block is present.
	Enable *bool `json:"enable,omitempty"`
	// CredentialsFile is a JSON file mapping an upstream host to
	// {"username", "password"}.
	CredentialsFile string `json:"credentialsFile,omitempty"`
	// DownloadDir is a local staging directory for images being synced
	// (zot requires it with remote storage). Optional.
	DownloadDir string `json:"downloadDir,omitempty"`
	// Registries are the upstreams.
	Registries []SyncRegistry `json:"registries"`
}

// SyncRegistry is one upstream registry.
type SyncRegistry struct {
	// URLs are the upstream base URLs, tried in order (mirrors).
	URLs []string `json:"urls"`
	// OnDemand pulls an image from upstream when a client asks for one that
	// is missing locally.
	OnDemand bool `json:"onDemand"`
	// PollInterval is the period of the background sync of Content; 0
	// means no periodic sync.
	PollInterval Duration `json:"pollInterval"`
	// Content selects what to sync; empty means everything (on demand).
	Content []SyncContent `json:"content"`
	// TLSVerify verifies the upstream certificate. Default true.
	TLSVerify *bool `json:"tlsVerify,omitempty"`
	// CertDir holds client certificates and CAs for the upstream.
	CertDir string `json:"certDir,omitempty"`
	// MaxRetries is how many times a failed request is retried; needs
	// RetryDelay. Nil means no retries.
	MaxRetries *int `json:"maxRetries,omitempty"`
	// RetryDelay is the wait between retries.
	RetryDelay *Duration `json:"retryDelay,omitempty"`
	// OnlySigned syncs only images that carry a signature.
	OnlySigned *bool `json:"onlySigned,omitempty"`
}

// SyncContent selects upstream repositories and tags.
type SyncContent struct {
	// Prefix is a repository glob (path.Match syntax, "**" crosses "/").
	Prefix string `json:"prefix"`
	// Tags filters tags; nil means all tags.
	Tags *SyncTags `json:"tags,omitempty"`
	// Destination is the local namespace to store under; empty keeps the
	// upstream name.
	Destination string `json:"destination,omitempty"`
	// StripPrefix removes the non-glob part of Prefix from the local name.
	StripPrefix bool `json:"stripPrefix"`
}

// SyncTags filters the tags of a SyncContent.
type SyncTags struct {
	// Regex keeps the tags it matches.
	Regex *string `json:"regex,omitempty"`
	// ExcludeRegex drops the tags it matches.
	ExcludeRegex *string `json:"excludeRegex,omitempty"`
	// Semver keeps only tags that are semantic versions.
	Semver *bool `json:"semver,omitempty"`
}

// MetricsConfig is zot's metrics extension.
type MetricsConfig struct {
	// Enable turns metrics on. Default true when the block is present.
	Enable *bool `json:"enable,omitempty"`
	// Prometheus is the scrape endpoint.
	Prometheus *PrometheusConfig `json:"prometheus,omitempty"`
}

// PrometheusConfig is the Prometheus scrape endpoint.
type PrometheusConfig struct {
	// Path is the URL path. Default "/metrics".
	Path string `json:"path"`
}

// SyncEnabled reports whether the sync extension is on.
func (e *ExtensionsConfig) SyncEnabled() bool {
	return e != nil && e.Sync != nil && (e.Sync.Enable == nil || *e.Sync.Enable)
}

// MetricsEnabled reports whether the metrics extension is on.
func (e *ExtensionsConfig) MetricsEnabled() bool {
	return e != nil && e.Metrics != nil && (e.Metrics.Enable == nil || *e.Metrics.Enable)
}

// check validates the extensions section.
func (e *ExtensionsConfig) check(p *problems) {
	if s := e.Sync; s != nil {
		for i, r := range s.Registries {
			r.check(p, fmt.Sprintf("extensions.sync.registries[%d]", i))
		}
	}
	if m := e.Metrics; m != nil && m.Prometheus != nil && !strings.HasPrefix(m.Prometheus.Path, "/") {
		p.add("extensions.metrics.prometheus.path", "must start with /, got %q", m.Prometheus.Path)
	}
}

// check validates one upstream registry.
func (r SyncRegistry) check(p *problems, field string) {
	if len(r.URLs) == 0 {
		p.add(field+".urls", "must list at least one URL")
	}
	for i, u := range r.URLs {
		checkHTTPURL(p, fmt.Sprintf("%s.urls[%d]", field, i), u)
	}
	checkNonNegative(p, field+".pollInterval", r.PollInterval)
	for i, c := range r.Content {
		cf := fmt.Sprintf("%s.content[%d]", field, i)
		checkGlob(p, cf+".prefix", c.Prefix)
		if c.StripPrefix && c.Destination == "/" && !strings.Contains(c.Prefix, "/*") {
			p.add(cf+".stripPrefix", `needs a glob ("/*") in prefix when destination is "/"`)
		}
		if t := c.Tags; t != nil {
			if t.Regex != nil {
				checkRegex(p, cf+".tags.regex", *t.Regex)
			}
			if t.ExcludeRegex != nil {
				checkRegex(p, cf+".tags.excludeRegex", *t.ExcludeRegex)
			}
		}
	}
	if r.MaxRetries != nil {
		switch n := *r.MaxRetries; {
		case n < 0:
			p.add(field+".maxRetries", "must not be negative, got %d", n)
		case n > 0 && r.RetryDelay == nil:
			p.add(field+".retryDelay", "required when maxRetries is set")
		}
	}
	if r.RetryDelay != nil {
		checkNonNegative(p, field+".retryDelay", *r.RetryDelay)
	}
}
