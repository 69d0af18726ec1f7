package main

// Many small images: one 1 MiB layer, a config and a manifest each.

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// benchSmall pushes then pulls o.images small images with c workers, runs times.
func benchSmall(o options, b *berthProc, c int, res *results) error {
	logf("small images: %d at concurrency %d x %d runs", o.images, c, o.runs)
	repo := fmt.Sprintf("bench/small-c%d", c)
	var pushes, pulls []sample
	rssPush, rssPull := 0.0, 0.0
	for r := 0; r < o.runs; r++ {
		ims := make([]*image, o.images)
		for i := range ims {
			ims[i] = newImage(1<<60|uint64(c)<<40|uint64(r)<<20|uint64(i), 1<<20)
		}
		tag := func(i int) string { return fmt.Sprintf("r%d-i%d", r, i) }
		w := watchRSS(b.pid())
		v, err := parallel(b.pid(), c, len(ims), func(ctx context.Context, i int) error { return b.pushImage(ctx, repo, tag(i), ims[i]) })
		rssPush = max(rssPush, w.stop())
		if err != nil {
			return fmt.Errorf("push c=%d: %w", c, err)
		}
		w = watchRSS(b.pid())
		u, err := parallel(b.pid(), c, len(ims), func(ctx context.Context, i int) error { return b.pullImage(ctx, repo, tag(i)) })
		rssPull = max(rssPull, w.stop())
		if err != nil {
			return fmt.Errorf("pull c=%d: %w", c, err)
		}
		logf("  run %d push %6.1f images/s (server CPU %.2fs), pull %6.1f images/s (server CPU %.2fs)", r+1, v.rate, v.cpu, u.rate, u.cpu)
		pushes, pulls = append(pushes, v), append(pulls, u)
	}
	per := float64(o.images) / 1000 // CPU ms per image
	res.add(row{Name: fmt.Sprintf("small images push, c=%d", c), Unit: "images/s", Berth: rates(pushes)})
	res.add(row{Name: fmt.Sprintf("small images pull, c=%d", c), Unit: "images/s", Berth: rates(pulls)})
	res.add(row{Name: fmt.Sprintf("server CPU, small push c=%d", c), Unit: "CPU ms/image", Berth: cpuPer(pushes, per)})
	res.add(row{Name: fmt.Sprintf("server CPU, small pull c=%d", c), Unit: "CPU ms/image", Berth: cpuPer(pulls, per)})
	res.add(row{Name: fmt.Sprintf("peak RSS, small images c=%d", c), Unit: "MiB", Berth: one(max(rssPush, rssPull))})
	return nil
}

// parallel runs fn(0..n-1) on c workers and returns operations per second
// and the CPU seconds process pid used meanwhile.
func parallel(pid, c, n int, fn func(ctx context.Context, i int) error) (sample, error) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	next := make(chan int, n)
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	settle()
	cpu0 := cpuSeconds(pid)
	start := time.Now()
	for w := 0; w < c; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := fn(ctx, i); err != nil {
					once.Do(func() { first = err; cancel() })
					return
				}
			}
		}()
	}
	wg.Wait()
	return sample{float64(n) / time.Since(start).Seconds(), cpuSeconds(pid) - cpu0}, first
}
