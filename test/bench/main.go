// Command bench measures Berth against plain Go HTTP servers on loopback,
// in one run, side by side (make bench runs it as go run ./test/bench):
//
//  1. push MiB/s of one -size MiB blob: Berth (POST then PUT with the body,
//     and POST, PATCH, PUT) versus a plain server that hashes the body and
//     writes it durably (temp file, fsync, rename, fsync of the directory),
//     and one that only hashes it;
//  2. pull MiB/s of that blob: Berth versus http.ServeFile of the same file;
//  3. images/s pushing and pulling -images small images (one 1 MiB layer,
//     a config, a manifest) at concurrency 1, 4 and 8;
//  4. Berth's peak RSS in each phase, and while a -big MiB blob is pushed;
//  5. with -cluster (default), a three-member cluster on S3 (versitygw) and
//     DynamoDB (dynalite) behind HAProxy: the -size MiB blob pushed and
//     pulled at its repository's owner versus through another member,
//     1 MiB images direct to the owner versus through HAProxy, and the
//     latency of small requests at the owner versus through another
//     member (clusterbench.go).
//
// Throughputs are the median of -runs runs (after -warmup untimed rounds),
// interleaved between the servers so that drift on a shared machine hits
// both. Targets print PASS or MISS; the exit status is 0 regardless, a
// benchmark is not a test. docs/benchmarks.md explains the figures.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"
)

var client = &http.Client{Transport: &http.Transport{
	Proxy:               nil,
	MaxIdleConns:        64,
	MaxIdleConnsPerHost: 64,
	IdleConnTimeout:     90 * time.Second,
	DisableCompression:  true,
	WriteBufferSize:     256 << 10,
	ReadBufferSize:      256 << 10,
}}

type options struct {
	size, big, images, runs, warmup, hop int
	bin, dir                             string
	json, keep, single, cluster          bool
}

func main() {
	var o options
	plain := flag.String("plain-serve", "", "internal: serve the plain baselines from `DIR`")
	flag.IntVar(&o.size, "size", 512, "MiB of the blob for push/pull throughput")
	flag.IntVar(&o.big, "big", 1024, "MiB of the blob pushed while Berth's RSS is watched (0 skips)")
	flag.IntVar(&o.images, "images", 64, "small images per concurrency level and run")
	flag.IntVar(&o.runs, "runs", 3, "runs of each throughput measurement (the median is reported)")
	flag.IntVar(&o.warmup, "warmup", 1, "untimed rounds of the large-blob measurements before the timed runs")
	flag.StringVar(&o.bin, "bin", "", "registry binary (default: build ./cmd/registry into the temp dir)")
	flag.StringVar(&o.dir, "dir", "", "parent of the temp dir holding both servers' storage (default: $TMPDIR)")
	flag.BoolVar(&o.json, "json", false, "print the results as JSON on stdout (the table goes to stderr)")
	flag.BoolVar(&o.keep, "keep", false, "keep the temp dir")
	flag.BoolVar(&o.single, "single", true, "run the single-node section (Berth versus plain servers)")
	flag.BoolVar(&o.cluster, "cluster", true, "run the cluster section (3 members on S3 + DynamoDB, HAProxy)")
	flag.IntVar(&o.hop, "hop-requests", 2000, "requests of each kind for the cluster's hop latency")
	flag.Parse()
	if *plain != "" {
		if err := plainServe(*plain); err != nil {
			fmt.Fprintln(os.Stderr, "plain server:", err)
			os.Exit(1)
		}
		return
	}
	if o.runs < 1 {
		o.runs = 1
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

// cleanups run at the end of run, or on SIGINT/SIGTERM, newest first.
var (
	cleanupMu sync.Mutex
	cleanups  []func()
)

func atExit(fn func()) {
	cleanupMu.Lock()
	cleanups = append(cleanups, fn)
	cleanupMu.Unlock()
}

func cleanup() {
	cleanupMu.Lock()
	defer cleanupMu.Unlock()
	for i := len(cleanups) - 1; i >= 0; i-- {
		cleanups[i]()
	}
	cleanups = nil
}

func run(o options) error {
	defer cleanup()
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigc
		logf("interrupted")
		cleanup()
		os.Exit(130)
	}()
	tmp, err := os.MkdirTemp(o.dir, "berth-bench-")
	if err != nil {
		return err
	}
	if o.keep {
		logf("keeping %s", tmp)
	} else {
		atExit(func() { os.RemoveAll(tmp) })
	}
	if o.bin == "" {
		logf("building ./cmd/registry")
		if o.bin, err = buildBerth(tmp); err != nil {
			return err
		}
	}
	res := &results{Machine: machine(tmp), Options: o}
	logf("%s", res.Machine)
	if o.single {
		if err := benchSingle(o, tmp, res); err != nil {
			return err
		}
	}
	if o.cluster {
		if err := benchCluster(o, filepath.Join(tmp, "cluster"), res); err != nil {
			return err
		}
	}
	res.print(o.json)
	return nil
}

// benchSingle compares one Berth on the fs driver with the plain servers.
func benchSingle(o options, tmp string, res *results) error {
	bdir, pdir := filepath.Join(tmp, "berth"), filepath.Join(tmp, "plain")
	for _, d := range []string{bdir, pdir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	b, err := startBerth(o.bin, bdir)
	if err != nil {
		return err
	}
	atExit(b.stop)
	defer b.stop() // before the cluster section starts
	p, err := startPlain(pdir)
	if err != nil {
		return err
	}
	atExit(p.stop)
	defer p.stop()

	if err := benchBig(o, b, p, res); err != nil {
		return err
	}
	for _, c := range []int{1, 4, 8} {
		if err := benchSmall(o, b, c, res); err != nil {
			return err
		}
	}
	if o.big > 0 {
		if err := benchRSS(o, b, res); err != nil {
			return err
		}
	}
	return nil
}

const opTimeout = 10 * time.Minute

// settle flushes dirty pages before a measurement, so that it does not
// pay for the previous one's writeback (both servers fsync, so there is
// little, but other processes on a shared machine may have some).
func settle() { syscall.Sync() }

// sample is one measurement: a rate and the server's CPU time meanwhile.
type sample struct{ rate, cpu float64 }

func rates(xs []sample) (v []float64) {
	for _, x := range xs {
		v = append(v, x.rate)
	}
	return v
}

// cpuPer is the server CPU seconds per unit of work (GiB, or image / 1000
// for ms per image).
func cpuPer(xs []sample, units float64) (v []float64) {
	for _, x := range xs {
		v = append(v, x.cpu/units)
	}
	return v
}

// timed runs fn and returns MiB/s for mib MiB and the CPU seconds that
// process pid used meanwhile.
func timed(pid int, mib float64, fn func(ctx context.Context) error) (sample, error) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	settle()
	cpu0 := cpuSeconds(pid)
	start := time.Now()
	if err := fn(ctx); err != nil {
		return sample{}, err
	}
	return sample{mib / time.Since(start).Seconds(), cpuSeconds(pid) - cpu0}, nil
}

// interleave runs each named measurement runs times, rotating their order
// every run, and returns the samples by name.
// The first warmup rounds are run and logged but not recorded.
func interleave(warmup, runs int, names []string, fns map[string]func() (sample, error)) (map[string][]sample, error) {
	out := map[string][]sample{}
	for i := -warmup; i < runs; i++ {
		for j := range names {
			name := names[(i+warmup+j)%len(names)]
			v, err := fns[name]()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			label := fmt.Sprintf("run %d", i+1)
			if i < 0 {
				label = "warm-up"
			} else {
				out[name] = append(out[name], v)
			}
			logf("  %-7s %-24s %7.1f MiB/s, server CPU %.2fs", label, name, v.rate, v.cpu)
		}
	}
	return out, nil
}

// benchBig measures push and pull of one large blob.
func benchBig(o options, b *berthProc, p *plainProc, res *results) error {
	size := int64(o.size) << 20
	g := newGen(1, size)
	logf("digesting the %d MiB blob", o.size)
	dgst := digestOf(g)
	mib := float64(o.size)
	body := func() io.Reader { g.Reset(); return struct{ io.Reader }{g} }
	const repo = "bench/big"

	logf("push %d MiB x %d runs", o.size, o.runs)
	rssB, rssP := watchRSS(b.pid()), watchRSS(p.pid())
	push, err := interleave(o.warmup, o.runs, []string{"berth POST+PUT", "berth POST+PATCH+PUT", "plain hash+write+fsync", "plain hash only"},
		map[string]func() (sample, error){
			"berth POST+PUT": func() (sample, error) {
				return timed(b.pid(), mib, func(ctx context.Context) error { return b.pushBlob(ctx, repo, dgst, body(), size) })
			},
			"berth POST+PATCH+PUT": func() (sample, error) {
				return timed(b.pid(), mib, func(ctx context.Context) error { return b.pushBlobPatch(ctx, repo, dgst, body(), size) })
			},
			"plain hash+write+fsync": func() (sample, error) {
				return timed(p.pid(), mib, func(ctx context.Context) error {
					_, err := do(ctx, http.MethodPut, p.base+"/write?digest="+dgst, body(), size, nil, http.StatusCreated)
					return err
				})
			},
			"plain hash only": func() (sample, error) {
				return timed(p.pid(), mib, func(ctx context.Context) error {
					_, err := do(ctx, http.MethodPut, p.base+"/hash?digest="+dgst, body(), size, nil, http.StatusCreated)
					return err
				})
			},
		})
	if err != nil {
		return err
	}
	pushRSS, plainPushRSS := rssB.stop(), rssP.stop()

	logf("pull %d MiB x %d runs", o.size, o.runs)
	path := b.blobPath(repo, dgst)
	if fi, err := os.Stat(path); err != nil || fi.Size() != size {
		return fmt.Errorf("blob not where the fs driver should keep it (%s): %v", path, err)
	}
	rssB, rssP = watchRSS(b.pid()), watchRSS(p.pid())
	discard := struct{ io.Writer }{io.Discard}
	pull, err := interleave(o.warmup, o.runs, []string{"berth GET blob", "plain ServeFile"},
		map[string]func() (sample, error){
			"berth GET blob": func() (sample, error) {
				return timed(b.pid(), mib, func(ctx context.Context) error {
					_, err := getTo(ctx, b.base+"/v2/"+repo+"/blobs/"+dgst, discard, nil)
					return err
				})
			},
			"plain ServeFile": func() (sample, error) {
				return timed(p.pid(), mib, func(ctx context.Context) error {
					_, err := getTo(ctx, p.base+"/file?path="+path, discard, nil)
					return err
				})
			},
		})
	if err != nil {
		return err
	}
	pullRSS, plainPullRSS := rssB.stop(), rssP.stop()

	sz := fmt.Sprintf("%d MiB", o.size)
	gib := mib / 1024
	const pw, ph, pf = "plain hash+write+fsync", "plain hash only", "plain ServeFile"
	bp, bpp, bg := push["berth POST+PUT"], push["berth POST+PATCH+PUT"], pull["berth GET blob"]
	res.add(row{Name: "push " + sz + ", POST+PUT", Unit: "MiB/s", Berth: rates(bp), Base: rates(push[pw]), BaseName: pw, Target: 0.85})
	res.add(row{Name: "push " + sz + ", POST+PATCH+PUT", Unit: "MiB/s", Berth: rates(bpp), Base: rates(push[pw]), BaseName: pw, Target: 0.85})
	res.add(row{Name: "push " + sz + ", POST+PUT", Unit: "MiB/s", Berth: rates(bp), Base: rates(push[ph]), BaseName: ph + " (no write)"})
	res.add(row{Name: "pull " + sz, Unit: "MiB/s", Berth: rates(bg), Base: rates(pull[pf]), BaseName: "plain http.ServeFile", Target: 0.85})
	res.add(row{Name: "server CPU, push POST+PUT", Unit: "CPU s/GiB", Berth: cpuPer(bp, gib), Base: cpuPer(push[pw], gib), BaseName: pw})
	res.add(row{Name: "server CPU, push POST+PATCH+PUT", Unit: "CPU s/GiB", Berth: cpuPer(bpp, gib), Base: cpuPer(push[pw], gib), BaseName: pw})
	res.add(row{Name: "server CPU, pull", Unit: "CPU s/GiB", Berth: cpuPer(bg, gib), Base: cpuPer(pull[pf], gib), BaseName: "plain http.ServeFile"})
	res.add(row{Name: "peak RSS, " + sz + " pushes", Unit: "MiB", Berth: one(pushRSS), Base: one(plainPushRSS), BaseName: "plain server"})
	res.add(row{Name: "peak RSS, " + sz + " pulls", Unit: "MiB", Berth: one(pullRSS), Base: one(plainPullRSS), BaseName: "plain server"})
	return nil
}

func one(v float64) []float64 { return []float64{v} }

// benchRSS pushes one o.big MiB blob while watching Berth's RSS.
func benchRSS(o options, b *berthProc, res *results) error {
	size := int64(o.big) << 20
	g := newGen(2, size)
	logf("digesting the %d MiB blob", o.big)
	dgst := digestOf(g)
	logf("push %d MiB once, watching RSS", o.big)
	w := watchRSS(b.pid())
	v, err := timed(b.pid(), float64(o.big), func(ctx context.Context) error {
		return b.pushBlob(ctx, "bench/rss", dgst, struct{ io.Reader }{g}, size)
	})
	peak := w.stop()
	if err != nil {
		return err
	}
	logf("  %.1f MiB/s, server CPU %.2fs, peak RSS %.1f MiB", v.rate, v.cpu, peak)
	res.add(row{Name: fmt.Sprintf("push %d MiB, POST+PUT", o.big), Unit: "MiB/s", Berth: one(v.rate)})
	res.add(row{Name: fmt.Sprintf("peak RSS, %d MiB push", o.big), Unit: "MiB", Berth: one(peak), Limit: 100})
	return nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
