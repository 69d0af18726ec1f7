package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// problems collects field-path errors so that Validate reports all of them.
type problems []error

// add records "path: message".
func (p *problems) add(field, format string, args ...any) {
	*p = append(*p, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
}

// distSpecRe accepts the distribution-spec versions Berth serves: 1.0.x and
// 1.1.x, with an optional pre-release suffix as zot writes ("1.1.0-dev").
var distSpecRe = regexp.MustCompile(`^1\.[01]\.[0-9]+(-[0-9A-Za-z.-]+)?$`)

// logLevels are the accepted values of log.level.
var logLevels = []string{"debug", "info", "warn", "error"}

// Validate checks the whole configuration and returns every problem found,
// joined with errors.Join; each names its field path. It expects defaults to
// have been applied (Default, SetDefaults); Load and Parse do both.
func (c *Config) Validate() error {
	var p problems
	if !distSpecRe.MatchString(c.DistSpecVersion) {
		p.add("distSpecVersion", "must be 1.0.x or 1.1.x, got %q", c.DistSpecVersion)
	}
	c.HTTP.check(&p)
	c.Storage.check(&p)
	if !slices.Contains(logLevels, c.Log.Level) {
		p.add("log.level", "must be one of %s, got %q", strings.Join(logLevels, ", "), c.Log.Level)
	}
	if c.Cluster != nil {
		c.Cluster.check(&p)
	}
	if c.Extensions != nil {
		c.Extensions.check(&p)
	}
	return errors.Join(p...)
}

// check validates the listener.
func (h HTTPConfig) check(p *problems) {
	if h.Address != "" {
		if _, _, err := net.SplitHostPort(h.Address); err == nil {
			p.add("http.address", "must be a host without a port (put the port in http.port), got %q", h.Address)
		}
	}
	if _, err := parsePort(h.Port, true); err != nil {
		p.add("http.port", "%v", err)
	}
	if h.TLS != nil {
		h.TLS.check(p, "http.tls")
	}
	h.checkLimits(p)
	if h.Auth != nil {
		h.Auth.check(p)
	}
	if h.AccessControl != nil {
		h.AccessControl.check(p)
	}
}

// checkLimits validates the HTTP limits.
func (h HTTPConfig) checkLimits(p *problems) {
	if h.MaxUploadsPerClient < 0 {
		p.add("http.maxUploadsPerClient", "must be 0 (no limit) or more, got %d", h.MaxUploadsPerClient)
	}
	for _, d := range []struct {
		field string
		v     Duration
	}{{"http.readIdleTimeout", h.ReadIdleTimeout}, {"http.writeIdleTimeout", h.WriteIdleTimeout}} {
		if d.v != 0 && d.v < MinIdleTimeout {
			p.add(d.field, "must be 0 (no limit) or at least %s, got %s", MinIdleTimeout, d.v)
		}
	}
	if h.ReadHeaderTimeout <= 0 {
		p.add("http.readHeaderTimeout", "must be positive, got %s", h.ReadHeaderTimeout)
	}
	if h.MaxHeaderBytes < MinMaxHeaderBytes || h.MaxHeaderBytes > MaxMaxHeaderBytes {
		p.add("http.maxHeaderBytes", "must be %d..%d, got %d", MinMaxHeaderBytes, MaxMaxHeaderBytes, h.MaxHeaderBytes)
	}
}

// check validates a TLS block: cert and key go together, and every file
// named exists.
func (t *TLSConfig) check(p *problems, field string) {
	if (t.Cert == "") != (t.Key == "") {
		p.add(field, "cert and key must both be set or both be empty")
	}
	checkFile(p, field+".cert", t.Cert)
	checkFile(p, field+".key", t.Key)
	checkFile(p, field+".cacert", t.CACert)
}

// check validates the scale-out configuration.
func (c *ClusterConfig) check(p *problems) {
	if len(c.Members) == 0 {
		p.add("cluster.members", "must list at least one member")
	}
	seen := make(map[string]int, len(c.Members))
	for i, m := range c.Members {
		field := fmt.Sprintf("cluster.members[%d]", i)
		host, port, err := net.SplitHostPort(m)
		switch {
		case err != nil:
			p.add(field, "must be host:port, got %q", m)
		case host == "":
			p.add(field, "host is empty in %q", m)
		default:
			if _, err := parsePort(port, false); err != nil {
				p.add(field, "port of %q %v", m, err)
			}
		}
		key := strings.ToLower(m)
		if j, dup := seen[key]; dup {
			p.add(field, "duplicate of cluster.members[%d] %q", j, m)
		} else {
			seen[key] = i
		}
	}
	if n := len(c.HashKey); n != 16 {
		p.add("cluster.hashKey", "must be exactly 16 bytes, got %d", n)
	}
	if c.TLS != nil {
		c.TLS.check(p, "cluster.tls")
	}
}

// parsePort checks a decimal TCP port, 1..65535, or 0 when zeroOK.
func parsePort(s string, zeroOK bool) (int, error) {
	n, err := strconv.Atoi(s)
	lo := 1
	if zeroOK {
		lo = 0
	}
	if err != nil || n < lo || n > 65535 {
		return 0, fmt.Errorf("must be a number in %d..65535, got %q", lo, s)
	}
	return n, nil
}

// checkFile records a problem when name is set but is not a readable
// regular file.
func checkFile(p *problems, field, name string) {
	if name == "" {
		return
	}
	fi, err := os.Stat(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		p.add(field, "file %q does not exist", name)
	case err != nil:
		p.add(field, "%v", err)
	case fi.IsDir():
		p.add(field, "%q is a directory, want a file", name)
	}
}

// checkGlob records a problem when pattern is not a valid repository glob:
// path.Match syntax, where "**" also matches across "/".
func checkGlob(p *problems, field, pattern string) {
	if pattern == "" {
		p.add(field, "must not be empty")
		return
	}
	if _, err := path.Match(strings.ReplaceAll(pattern, "**", "*"), ""); err != nil {
		p.add(field, "invalid glob %q: %v", pattern, err)
	}
}

// checkRegex records a problem when expr does not compile.
func checkRegex(p *problems, field, expr string) {
	if _, err := regexp.Compile(expr); err != nil {
		p.add(field, "invalid regular expression: %v", err)
	}
}

// checkNonNegative records a problem when d is negative.
func checkNonNegative(p *problems, field string, d Duration) {
	if d < 0 {
		p.add(field, "must not be negative, got %s", d)
	}
}
