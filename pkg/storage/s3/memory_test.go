package s3

import (
	"context"
	"crypto/sha256"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// patternReader yields n bytes cycling through block, without holding them.
type patternReader struct {
	block []byte
	off   int64
	n     int64
}

func (r *patternReader) Read(p []byte) (int, error) {
	if r.off >= r.n {
		return 0, io.EOF
	}
	if rest := r.n - r.off; int64(len(p)) > rest {
		p = p[:rest]
	}
	total := 0
	for len(p) > 0 {
		m := copy(p, r.block[r.off%int64(len(r.block)):])
		p = p[m:]
		r.off += int64(m)
		total += m
	}
	return total, nil
}

func patternDigest(block []byte, n int64) digest.Digest {
	h := sha256.New()
	io.Copy(h, &patternReader{block: block, n: n})
	return digest.NewDigest(digest.SHA256, h)
}

// Appending 64 MiB in 1 MiB chunks takes about one part buffer, not
// anything proportional to the blob: parts stream out of a pooled buffer
// and tail objects are read back into it. Checked twice: the bytes
// allocated in all (not under -race, whose sync.Pool drops items at
// random), and the peak of the live heap, sampled after forced GCs.
func TestAppendMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("64 MiB uploads")
	}
	const (
		size  = 64 << 20
		chunk = 1 << 20
		// One part buffer, the tail read back into it, an SDK request's
		// buffers; the slack of TotalAlloc also covers the SDK's garbage
		// per request (about 25 KiB) and buffers sync.Pool let go.
		limit      = 3*MinPartSize + 8<<20
		allocLimit = 3*MinPartSize + 16<<20
	)
	d := newTestDriver(t, testConfig(newBucket())) // PartSize: 5 MiB
	block := randomBytes(10, 64<<10+7)
	upload := func(t *testing.T) {
		ctx := context.Background()
		u, err := d.NewUpload(ctx, "mem")
		if err != nil {
			t.Fatal(err)
		}
		src := &patternReader{block: block, n: size}
		for src.off < size {
			if _, err := u.Append(ctx, io.LimitReader(src, chunk)); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := u.Commit(ctx, patternDigest(block, size)); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("TotalAlloc", func(t *testing.T) {
		if raceEnabled {
			t.Skip("sync.Pool drops buffers at random under -race")
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		upload(t)
		runtime.ReadMemStats(&after)
		alloc := after.TotalAlloc - before.TotalAlloc
		t.Logf("%d MiB blob: %.1f MiB allocated (limit %d MiB)", size>>20, float64(alloc)/(1<<20), allocLimit>>20)
		if alloc > allocLimit {
			t.Errorf("allocated %d bytes for a %d-byte blob, want < %d", alloc, size, allocLimit)
		}
	})

	t.Run("LiveHeap", func(t *testing.T) {
		live := func() int64 {
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			return int64(ms.HeapAlloc)
		}
		live() // the second GC also empties sync.Pool's victim cache
		base := live()
		var peak atomic.Int64
		done := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				if h := live() - base; h > peak.Load() {
					peak.Store(h)
				}
				select {
				case <-done:
					return
				case <-time.After(10 * time.Millisecond):
				}
			}
		})
		upload(t)
		close(done)
		wg.Wait()
		t.Logf("%d MiB blob: live heap grew by at most %.1f MiB (limit %d MiB)", size>>20, float64(peak.Load())/(1<<20), limit>>20)
		if peak.Load() > limit {
			t.Errorf("live heap grew by %d bytes for a %d-byte blob, want < %d", peak.Load(), size, limit)
		}
	})
}

// BenchmarkUpload streams 128 MiB blobs through upload sessions with the
// default part size: in one Append (a monolithic PATCH or PUT) and in
// 1 MiB Appends (chunked PATCHes).
func BenchmarkUpload(b *testing.B) {
	const size = 128 << 20
	block := randomBytes(11, 64<<10+7)
	dgst := patternDigest(block, size)
	cfg := testConfig(newBucket())
	cfg.PartSize = 0
	d := newTestDriver(b, cfg)
	ctx := context.Background()
	for _, chunk := range []int64{size, 1 << 20} {
		name := "monolithic"
		if chunk < size {
			name = "chunks-1MiB"
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(size)
			b.ReportAllocs()
			for b.Loop() {
				u, err := d.NewUpload(ctx, "bench")
				if err != nil {
					b.Fatal(err)
				}
				src := &patternReader{block: block, n: size}
				for src.off < size {
					if _, err := u.Append(ctx, io.LimitReader(src, chunk)); err != nil {
						b.Fatal(err)
					}
				}
				if _, err := u.Commit(ctx, dgst); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
