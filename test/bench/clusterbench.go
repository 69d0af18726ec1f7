package main

// The cluster section: the same operations sent directly to a repository's
// owner and through another member (or HAProxy), side by side in one run.
// S3 (versitygw) is the backend, so absolute figures are bounded by it;
// what counts is proxied versus direct within the run.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"
)

// benchCluster starts the cluster under dir and runs the three parts.
func benchCluster(o options, dir string, res *results) error {
	for _, t := range []string{"versitygw", "dynalite", "haproxy"} {
		if _, err := toolPath(t); err != nil {
			res.ClusterSetup = "skipped: " + err.Error()
			logf("cluster: %s", res.ClusterSetup)
			return nil
		}
	}
	logf("cluster: starting versitygw, dynalite, 3 members and HAProxy")
	start := time.Now()
	c, err := startCluster(o.bin, dir)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	res.ClusterSetup = c.desc
	logf("cluster: %s; up in %s", c.desc, time.Since(start).Round(time.Millisecond))
	for _, m := range c.members {
		logf("cluster: member %s pid %d, log %s", m.host, m.pid(), m.jlog)
	}
	if err := clusterBig(o, c, res); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	if err := clusterSmall(o, c, res); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	if err := clusterHop(o, c, res); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	return c.checkErrors(res)
}

// retry runs fn again, once, when it fails with a 500: versitygw's posix
// backend answers a PutObject 409 ExistingObjectIsDirectory, now and then,
// when a concurrent DeleteObject removes the parent directory it is
// linking into (versitygw#1988), and Berth answers 500. checkErrors
// makes sure that no other error was retried.
func (c *clusterEnv) retry(fn func(ctx context.Context, i int) error) func(ctx context.Context, i int) error {
	return func(ctx context.Context, i int) error {
		err := fn(ctx, i)
		if err != nil && strings.Contains(err.Error(), ": 500 Internal Server Error") && c.retries.Add(1) <= 10 {
			logf("  retrying once after: %v", err)
			err = fn(ctx, i)
		}
		return err
	}
}

// checkErrors fails when a member logged a failed request other than the
// known versitygw race, and notes the retries in the report.
func (c *clusterEnv) checkErrors(res *results) error {
	known := 0
	for _, m := range c.members {
		var bad error
		_ = eachLogLine(m.jlog, 0, func(l map[string]any) {
			if l["level"] != "error" || bad != nil {
				return
			}
			if e, _ := l["error"].(string); strings.Contains(e, "ExistingObjectIsDirectory") {
				known++
			} else {
				bad = fmt.Errorf("%s logged an error: %v (%s)", m.host, l, m.jlog)
			}
		})
		if bad != nil {
			return bad
		}
	}
	if n := c.retries.Load(); n > 0 || known > 0 {
		res.ClusterSetup += fmt.Sprintf("; %d operations retried after versitygw's ExistingObjectIsDirectory race (%d logged)", n, known)
	}
	return nil
}

// checkForwarded logs how many of via's requests for repo since mark were
// forwarded, and fails when via served any itself (then the owner was
// seen down and the "proxied" figures would not measure a hop).
func checkForwarded(via *member, mark int64, repo string) error {
	fwd, local := 0, 0
	_ = eachLogLine(via.jlog, mark, func(l map[string]any) {
		if l["message"] != "request" || l["repo"] != repo {
			return
		}
		if _, ok := l["owner"]; ok {
			fwd++
		} else {
			local++
		}
	})
	logf("  %s forwarded %d requests for %s, served %d itself", via.host, fwd, repo, local)
	if local > 0 || fwd == 0 {
		return fmt.Errorf("%s did not forward every request for %s (log %s)", via.host, repo, via.jlog)
	}
	return nil
}

// clusterBig pushes and pulls one -size MiB blob at the owner and through
// another member, interleaved.
func clusterBig(o options, c *clusterEnv, res *results) error {
	const repo = "bench/cluster-big"
	own, via, err := c.owner(repo)
	if err != nil {
		return err
	}
	size := int64(o.size) << 20
	g := newGen(3, size)
	logf("cluster: digesting the %d MiB blob; %s is owned by %s, proxied through %s", o.size, repo, own.host, via.host)
	dgst := digestOf(g)
	mib, gib := float64(o.size), float64(o.size)/1024
	body := func() io.Reader { g.Reset(); return struct{ io.Reader }{g} }
	direct, proxied := &berthProc{base: own.url}, &berthProc{base: via.url}
	mark := logSize(via.jlog)

	// sample.cpu is the CPU of the members and versitygw together; fwd
	// collects the forwarding member's own share in proxied runs.
	fwd := map[string][]float64{}
	run := func(name string, fn func(ctx context.Context) error) func() (sample, error) {
		return func() (sample, error) {
			f0, c0 := cpuSeconds(via.pid()), c.cpu()
			v, err := timed(own.pid(), mib, fn)
			v.cpu = c.cpu() - c0
			if name != "" {
				fwd[name] = append(fwd[name], cpuSeconds(via.pid())-f0)
			}
			return v, err
		}
	}
	logf("cluster: push %d MiB x %d runs (server CPU: members + versitygw)", o.size, o.runs)
	push, err := interleave(o.warmup, o.runs, []string{"push direct", "push via member"}, map[string]func() (sample, error){
		"push direct":     run("", func(ctx context.Context) error { return direct.pushBlob(ctx, repo, dgst, body(), size) }),
		"push via member": run("push", func(ctx context.Context) error { return proxied.pushBlob(ctx, repo, dgst, body(), size) }),
	})
	if err != nil {
		return err
	}
	logf("cluster: pull %d MiB x %d runs", o.size, o.runs)
	discard := struct{ io.Writer }{io.Discard}
	get := func(b *berthProc) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			n, err := getTo(ctx, b.base+"/v2/"+repo+"/blobs/"+dgst, discard, nil)
			if err == nil && n != size {
				err = fmt.Errorf("pulled %d bytes, want %d", n, size)
			}
			return err
		}
	}
	pull, err := interleave(o.warmup, o.runs, []string{"pull direct", "pull via member"}, map[string]func() (sample, error){
		"pull direct":     run("", get(direct)),
		"pull via member": run("pull", get(proxied)),
	})
	if err != nil {
		return err
	}
	if err := checkForwarded(via, mark, repo); err != nil {
		return err
	}
	sz := fmt.Sprintf("%d MiB blob", o.size)
	res.addCluster(crow{Name: "push " + sz + ", POST+PUT", Unit: "MiB/s", Via: "member", Direct: rates(push["push direct"]), Proxied: rates(push["push via member"]), MinRatio: 0.9})
	res.addCluster(crow{Name: "pull " + sz, Unit: "MiB/s", Via: "member", Direct: rates(pull["pull direct"]), Proxied: rates(pull["pull via member"]), MinRatio: 0.9})
	for _, k := range []string{"push", "pull"} {
		all := map[string][]sample{"push": push["push direct"], "pull": pull["pull direct"]}[k]
		prox := map[string][]sample{"push": push["push via member"], "pull": pull["pull via member"]}[k]
		res.addCluster(crow{Name: "server CPU, " + k + ": members + versitygw", Unit: "CPU s/GiB", Via: "member", Direct: cpuPer(all, gib), Proxied: cpuPer(prox, gib)})
		f := fwd[k][len(fwd[k])-o.runs:] // without the warm-up
		for i := range f {
			f[i] /= gib
		}
		res.addCluster(crow{Name: "server CPU, " + k + ": forwarding member", Unit: "CPU s/GiB", Via: "member", Proxied: f})
	}
	return nil
}

// clusterSmall pushes then pulls -images images of one 1 MiB layer, to the
// owner and through HAProxy (round robin: two requests in three take a
// hop), at concurrency 1 and 4.
func clusterSmall(o options, c *clusterEnv, res *results) error {
	names := []string{"direct", "haproxy"}
	for _, conc := range []int{1, 4} {
		repo := fmt.Sprintf("bench/cluster-small-c%d", conc)
		own, _, err := c.owner(repo)
		if err != nil {
			return err
		}
		eps := map[string]*berthProc{"direct": {base: own.url}, "haproxy": {base: c.lbURL}}
		logf("cluster: 1 MiB images: %d at concurrency %d x %d runs, %s owned by %s", o.images, conc, o.runs, repo, own.host)
		push, pull := map[string][]float64{}, map[string][]float64{}
		for r := -min(o.warmup, 1); r < o.runs; r++ {
			for j := range names {
				name := names[(r+1+j)%len(names)]
				b, n := eps[name], o.images
				if r < 0 {
					n = min(n, 16)
				}
				ims := make([]*image, n)
				for i := range ims {
					ims[i] = newImage(2<<60|uint64(conc)<<40|uint64(r+1)<<20|uint64(slices.Index(names, name))<<18|uint64(i), 1<<20)
				}
				tag := func(i int) string { return fmt.Sprintf("%s-r%d-i%d", name, r+1, i) }
				v, err := parallel(own.pid(), conc, n, c.retry(func(ctx context.Context, i int) error { return b.pushImage(ctx, repo, tag(i), ims[i]) }))
				if err != nil {
					return fmt.Errorf("push %s c=%d: %w", name, conc, err)
				}
				u, err := parallel(own.pid(), conc, n, c.retry(func(ctx context.Context, i int) error { return b.pullImage(ctx, repo, tag(i)) }))
				if err != nil {
					return fmt.Errorf("pull %s c=%d: %w", name, conc, err)
				}
				label := fmt.Sprintf("run %d", r+1)
				if r < 0 {
					label = "warm-up"
				} else {
					push[name], pull[name] = append(push[name], v.rate), append(pull[name], u.rate)
				}
				logf("  %-7s %-7s push %6.1f images/s, pull %6.1f images/s", label, name, v.rate, u.rate)
			}
		}
		res.addCluster(crow{Name: fmt.Sprintf("1 MiB images push, c=%d", conc), Unit: "images/s", Via: "HAProxy", Direct: push["direct"], Proxied: push["haproxy"]})
		res.addCluster(crow{Name: fmt.Sprintf("1 MiB images pull, c=%d", conc), Unit: "images/s", Via: "HAProxy", Direct: pull["direct"], Proxied: pull["haproxy"]})
	}
	return nil
}

// clusterHop measures the latency of small requests at the owner and
// through another member: o.hop requests each, sequential, keep-alive, in
// blocks of 100 alternating between the two so that drift hits both.
func clusterHop(o options, c *clusterEnv, res *results) error {
	const repo, tag = "bench/cluster-hop", "latest"
	own, via, err := c.owner(repo)
	if err != nil {
		return err
	}
	im := newImage(3<<60, 4096)
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := (&berthProc{base: own.url}).pushImage(ctx, repo, tag, im); err != nil {
		return err
	}
	logf("cluster: hop latency, %d requests each, %s owned by %s, proxied through %s", o.hop, repo, own.host, via.host)
	mark := logSize(via.jlog)
	type probe struct {
		name, method, path string
		hdr                map[string]string
	}
	for _, p := range []probe{
		{fmt.Sprintf("HEAD manifest (%d B)", len(im.manifest)), http.MethodHead, "/v2/" + repo + "/manifests/" + tag, map[string]string{"Accept": mtManifest}},
		{fmt.Sprintf("GET blob (%d B)", len(im.config)), http.MethodGet, "/v2/" + repo + "/blobs/" + im.configD, nil},
	} {
		lat := map[string][]float64{}
		bases := map[string]string{"direct": own.url, "via": via.url}
		send := func(name string, n int, keep bool) error {
			for i := 0; i < n; i++ {
				t0 := time.Now()
				if _, err := do(ctx, p.method, bases[name]+p.path, nil, 0, p.hdr, http.StatusOK); err != nil {
					return err
				}
				if keep {
					lat[name] = append(lat[name], float64(time.Since(t0).Nanoseconds())/1e6)
				}
			}
			return nil
		}
		for _, name := range []string{"direct", "via"} { // warm-up: connections, caches
			if err := send(name, 200, false); err != nil {
				return err
			}
		}
		const block = 100
		for b := 0; b*block < o.hop; b++ {
			for j, name := range []string{"direct", "via"} {
				if b%2 == 1 {
					name = []string{"via", "direct"}[j]
				}
				if err := send(name, min(block, o.hop-b*block), true); err != nil {
					return err
				}
			}
		}
		for _, q := range []struct {
			label string
			p     float64
			limit float64
		}{{"p50", 0.50, 1}, {"p99", 0.99, 0}} {
			d, v := percentile(lat["direct"], q.p), percentile(lat["via"], q.p)
			logf("  %-24s %s direct %.3f ms, via member %.3f ms", p.name, q.label, d, v)
			res.addCluster(crow{Name: p.name + " " + q.label, Unit: "ms", Via: "member", Direct: one64(d), Proxied: one64(v), MaxOver: q.limit})
		}
	}
	return checkForwarded(via, mark, repo)
}
