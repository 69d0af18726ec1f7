package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

// machine describes where the bench ran, in one line.
func machine(dir string) string {
	cpu := "unknown CPU"
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	kernel := "?"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(b))
	}
	mem := "?"
	if kb := procField("/proc/meminfo", "MemTotal"); kb > 0 {
		mem = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
	}
	return fmt.Sprintf("%s %s/%s, GOMAXPROCS=%d (NumCPU=%d), CPU %q, RAM %s, kernel %s, temp dir %s (%s)",
		runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.GOMAXPROCS(0), runtime.NumCPU(),
		cpu, mem, kernel, dir, fsType(dir))
}

// fsType is the type of the filesystem mounted deepest above dir.
func fsType(dir string) string {
	dir, _ = filepath.Abs(dir)
	if r, err := filepath.EvalSymlinks(dir); err == nil {
		dir = r
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "?"
	}
	defer f.Close()
	best, typ := "", "?"
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		fields, tail := strings.Fields(pre), strings.Fields(post)
		if !ok || len(fields) < 5 || len(tail) < 1 {
			continue
		}
		mp := fields[4]
		if (dir == mp || strings.HasPrefix(dir, strings.TrimSuffix(mp, "/")+"/")) && len(mp) >= len(best) {
			best, typ = mp, tail[0]
		}
	}
	return typ
}

// procField reads a "Key:   N kB" field of a /proc status-like file, in kB.
func procField(path, key string) int64 {
	f, err := os.Open(path)
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && k == key {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return -1
			}
			return n
		}
	}
	return -1
}

func statusField(pid int, key string) int64 {
	return procField(fmt.Sprintf("/proc/%d/status", pid), key)
}

// rssWatch measures the peak RSS of a process over one phase: VmHWM, reset
// at the start through clear_refs (Linux ≥ 4.0) so that it covers the phase
// only, and VmRSS sampled every 10ms in case the reset is refused.
type rssWatch struct {
	pid   int
	reset bool
	stopc chan struct{}
	wg    sync.WaitGroup
	max   int64
}

func watchRSS(pid int) *rssWatch {
	w := &rssWatch{pid: pid, stopc: make(chan struct{})}
	w.reset = os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0) == nil
	w.max = statusField(pid, "VmRSS")
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-w.stopc:
				return
			case <-t.C:
				if v := statusField(pid, "VmRSS"); v > w.max {
					w.max = v
				}
			}
		}
	}()
	return w
}

// stop returns the phase's peak RSS in MiB.
func (w *rssWatch) stop() float64 {
	close(w.stopc)
	w.wg.Wait()
	peak := w.max
	if w.reset {
		if hwm := statusField(w.pid, "VmHWM"); hwm > peak {
			peak = hwm
		}
	}
	return float64(peak) / 1024
}

// cpuSeconds is the user+system CPU time a process has used, all threads.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+1:]
	}
	f := strings.Fields(s) // f[0] is field 3 (state): utime is field 14
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / clockTicks
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100
