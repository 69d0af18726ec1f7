package sync

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	gosync "sync"
	"sync/atomic"

	"github.com/opencontainers/go-digest"
)

// liveBlob is a blob being copied from upstream into a repository. Its
// bytes are staged in a spool file (in downloadDir) as they arrive, so that
// clients asking for the blob meanwhile read them at once, at their own
// pace, instead of waiting for the copy to end. The spool is unlinked as
// soon as it is created: nothing is left behind by a crash, and the file
// goes away when the copy and the last reader close it.
type liveBlob struct {
	key  string // local repository "@" digest
	src  source
	dgst digest.Digest

	started chan struct{} // closed once the spool exists and the size is known, or the copy ended
	done    chan struct{} // closed when the copy ended; err is then set

	// abandon cancels the copy once nobody waits for it any more (the
	// image copy that wanted it failed, its readers left).
	abandoned context.Context
	abandon   context.CancelFunc
	waiters   int // guarded by liveSet.mu

	mu       gosync.Mutex
	size     int64 // -1 until known
	written  int64 // high-water mark of the spool
	spool    *os.File
	spoolErr error         // the spool failed: readers fail, the copy goes on
	refs     int           // holders of the spool: the copy and each reader
	wake     chan struct{} // closed and replaced when written or the state changes
	isStart  bool
	finished bool
	err      error
}

func newLiveBlob(key string, src source, dgst digest.Digest) *liveBlob {
	b := &liveBlob{
		key: key, src: src, dgst: dgst,
		started: make(chan struct{}), done: make(chan struct{}), wake: make(chan struct{}),
		size: -1, refs: 1,
	}
	b.abandoned, b.abandon = context.WithCancel(context.Background())
	return b
}

// begin prepares the spool for an attempt of size bytes (known before the
// first byte). Later attempts rewrite the same bytes from the start: the
// spool and its high-water mark are kept, so readers never go back.
func (b *liveBlob) begin(dir string, size int64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.spool == nil {
		f, err := os.CreateTemp(dir, "berth-sync-*")
		if err != nil {
			return fmt.Errorf("create a spool file: %w", err)
		}
		_ = os.Remove(f.Name())
		b.spool = f
	}
	if b.size >= 0 && b.size != size {
		b.spoolErr = fmt.Errorf("blob %s: upstream now announces %d bytes, earlier %d", b.dgst, size, b.size)
		b.notifyLocked()
		return b.spoolErr
	}
	b.size = size
	if !b.isStart {
		b.isStart = true
		close(b.started)
	}
	return nil
}

// writer returns a writer into the spool from offset 0, for one attempt.
func (b *liveBlob) writer() io.Writer { return &spoolWriter{b: b} }

type spoolWriter struct {
	b   *liveBlob
	off int64
	buf []byte // for comparing a retry's bytes with what readers have
}

// Write stages p for readers. It never fails the copy: a spool that
// cannot be written (a full downloadDir) fails its readers only. A retry
// rewrites bytes readers may have read already: they must be the same, or
// the readers fail (the digest check covers only the attempt that
// succeeds).
func (w *spoolWriter) Write(p []byte) (int, error) {
	b := w.b
	b.mu.Lock()
	failed, written := b.spoolErr != nil, b.written
	b.mu.Unlock()
	if failed {
		return len(p), nil
	}
	var err error
	if seen := min(int64(len(p)), written-w.off); seen > 0 {
		if int64(cap(w.buf)) < seen {
			w.buf = make([]byte, seen)
		}
		w.buf = w.buf[:seen]
		if _, err = b.spool.ReadAt(w.buf, w.off); err == nil && !bytes.Equal(w.buf, p[:seen]) {
			err = errors.New("a retry sent other bytes than the first attempt")
		}
	}
	if err == nil {
		_, err = b.spool.WriteAt(p, w.off)
	}
	w.off += int64(len(p))
	b.mu.Lock()
	if err != nil {
		b.spoolErr = fmt.Errorf("spool of blob %s: %w", b.dgst, err)
	} else if w.off > b.written {
		b.written = w.off
	}
	b.notifyLocked()
	b.mu.Unlock()
	return len(p), nil
}

func (b *liveBlob) notifyLocked() {
	close(b.wake)
	b.wake = make(chan struct{})
}

// finish records the copy's outcome and drops the copy's hold on the spool.
func (b *liveBlob) finish(err error) {
	b.mu.Lock()
	b.finished, b.err = true, err
	if !b.isStart {
		b.isStart = true
		close(b.started)
	}
	b.notifyLocked()
	b.mu.Unlock()
	close(b.done)
	b.release()
}

func (b *liveBlob) release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refs--
	if b.refs == 0 && b.spool != nil {
		_ = b.spool.Close()
		b.spool = nil
	}
}

// reader returns a reader of the spool, or nil when there is none to read
// (the copy ended without one, or failed: see result). onClose runs when
// the reader is closed.
func (b *liveBlob) reader(ctx context.Context, onClose func()) *blobReader {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.spool == nil || b.err != nil || b.spoolErr != nil || b.size < 0 {
		return nil
	}
	b.refs++
	return &blobReader{b: b, f: b.spool, ctx: ctx, size: b.size, end: b.size - 1, onClose: onClose}
}

// result is the copy's outcome once done is closed.
func (b *liveBlob) result() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// errCopyFailed is what a reader of a failed copy gets.
var errCopyFailed = errors.New("copy from upstream failed")

// blobReader reads a live blob's spool: reads block until the bytes have
// arrived, and fail when the copy does. The last byte of the response (of
// the blob, or of a Range: see EndsAt) is held back until the copy has
// verified the digest, so a reader never gets a complete body of wrong
// bytes. It is an io.ReadSeekCloser of the blob's final size, for
// http.ServeContent.
type blobReader struct {
	b       *liveBlob
	f       *os.File // the spool, held open until Close
	ctx     context.Context
	size    int64
	end     int64 // the response's last byte
	pos     int64
	closed  atomic.Bool
	once    gosync.Once
	onClose func()
}

// Size is the blob's size.
func (r *blobReader) Size() int64 { return r.size }

// EndsAt holds byte end, where the response ends, until the digest is
// verified (and still the blob's last byte, for reads past end).
func (r *blobReader) EndsAt(end int64) { r.end = min(end, r.size-1) }

func (r *blobReader) Read(p []byte) (int, error) {
	for {
		if r.closed.Load() {
			return 0, os.ErrClosed
		}
		b := r.b
		b.mu.Lock()
		written, wake, finished, err := b.written, b.wake, b.finished, b.err
		if err == nil {
			err = b.spoolErr
		}
		b.mu.Unlock()
		switch {
		case err != nil:
			return 0, fmt.Errorf("blob %s: %w: %v", b.dgst, errCopyFailed, err)
		case r.pos >= r.size && finished:
			return 0, io.EOF
		}
		limit := min(written, r.size)
		if !finished {
			// The response's last byte waits for the digest check.
			hold := r.size - 1
			if r.end >= r.pos {
				hold = min(hold, r.end)
			}
			limit = min(limit, hold)
		}
		if limit > r.pos {
			n, err := r.f.ReadAt(p[:min(int64(len(p)), limit-r.pos)], r.pos)
			r.pos += int64(n)
			if err == io.EOF && n > 0 {
				err = nil
			}
			return n, err
		}
		if finished {
			return 0, io.ErrUnexpectedEOF // the copy ended short of the size: cannot happen after a verified commit
		}
		select {
		case <-wake:
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
}

func (r *blobReader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.pos
	case io.SeekEnd:
		offset += r.size
	default:
		return 0, errors.New("seek: bad whence")
	}
	if offset < 0 {
		return 0, errors.New("seek: negative position")
	}
	r.pos = offset
	return offset, nil
}

// Close releases the reader's hold on the spool.
func (r *blobReader) Close() error {
	r.once.Do(func() {
		r.closed.Store(true)
		r.b.release()
		if r.onClose != nil {
			r.onClose()
		}
	})
	return nil
}
