package sync

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	gosync "sync"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berthreg/berth/pkg/api"
	"github.com/berthreg/berth/pkg/storage"
)

// liveImage is an image copy in flight: one per local repository and
// reference at a time (concurrent misses join it). Clients are answered
// from it as soon as its top manifest is known, while its blobs are still
// being copied; the registry stores the manifests (and the tag, last) only
// once everything they reference is stored.
type liveImage struct {
	key   string // repo ":" tag or repo "@" digest
	src   source
	mode  string
	ready chan struct{} // closed when top is known, or the copy ended first
	done  chan struct{} // closed when the copy ended; err is then final

	// Guarded by liveSet.mu.
	started   time.Time                       // when the copy started
	mirror    *upstream                       // the mirror the copy is reading from
	top       *fetched                        // nil: the registry's copy is current
	manifests map[digest.Digest]*fetched      // top and the child manifests fetched so far
	blobs     map[digest.Digest]v1.Descriptor // blobs of those manifests: clients may ask for them
	isReady   bool
	err       error
}

// liveSet tracks the copies in flight.
type liveSet struct {
	mu     gosync.Mutex
	images map[string]*liveImage
	blobs  map[string]*liveBlob
}

// publish makes img's top manifest servable (nil: serve the local copy).
func (l *liveSet) publish(img *liveImage, top *fetched) {
	if img == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if img.isReady {
		return
	}
	img.top, img.isReady = top, true
	if top != nil {
		img.manifests[top.digest] = top
	}
	close(img.ready)
}

// streams reports whether clients are served from img while it copies:
// on-demand copies only (a periodic copy neither spools nor starts blobs
// for clients, so clients joining one wait until it is stored).
func (img *liveImage) streams() bool { return img != nil && img.mode == modeOnDemand }

// addManifest makes a child manifest of img servable by digest.
func (l *liveSet) addManifest(img *liveImage, f *fetched) {
	if !img.streams() {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	img.manifests[f.digest] = f
}

// addBlobs records blobs img's manifests reference, before those
// manifests are given to clients: only these may be fetched for a client.
func (l *liveSet) addBlobs(img *liveImage, descs []v1.Descriptor) {
	if !img.streams() {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, d := range descs {
		img.blobs[d.Digest] = d
	}
}

// manifest finds the manifest dgst of repo among the copies in flight.
func (l *liveSet) manifest(repo string, dgst digest.Digest) *fetched {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, img := range l.images {
		if img.src.local == repo {
			if f := img.manifests[dgst]; f != nil {
				return f
			}
		}
	}
	return nil
}

// plannedBlob finds, among the on-demand copies in flight into repo, one
// whose manifests reference blob dgst, and the mirrors to fetch it from
// (the copy's current one first).
func (l *liveSet) plannedBlob(repo string, dgst digest.Digest) (source, v1.Descriptor, []*upstream, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if img := l.plannerLocked(repo, dgst); img != nil {
		mirrors := img.src.reg.mirrors
		if img.mirror != nil {
			mirrors = fromMirror(mirrors, img.mirror)
		}
		return img.src, img.blobs[dgst], mirrors, true
	}
	return source{}, v1.Descriptor{}, nil, false
}

// plannerLocked is a copy in flight into repo whose manifests reference
// dgst, or nil. l.mu is held.
func (l *liveSet) plannerLocked(repo string, dgst digest.Digest) *liveImage {
	for _, img := range l.images {
		if _, ok := img.blobs[dgst]; ok && img.src.local == repo {
			return img
		}
	}
	return nil
}

// reading records the mirror img's copy reads from.
func (l *liveSet) reading(img *liveImage, u *upstream) {
	if img == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	img.mirror = u
}

// published is img's top manifest once given to clients (nil before, or
// for no img).
func (l *liveSet) published(img *liveImage) *fetched {
	if img == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return img.top
}

// served is a fetched manifest (its media type settled by fetchManifest)
// as the API serves it.
func served(f *fetched) *api.SyncedManifest {
	return &api.SyncedManifest{Digest: f.digest.String(), MediaType: f.mediaType, Body: f.body}
}

// image starts the copy of src:ref (run by run, in mode) unless one is in
// flight for key, and returns it.
func (s *Syncer) image(ctx context.Context, src source, ref, key, mode string,
	run func(context.Context, *liveImage) error) *liveImage {
	s.live.mu.Lock()
	defer s.live.mu.Unlock()
	if img := s.live.images[key]; img != nil {
		return img
	}
	img := &liveImage{
		key: key, src: src, mode: mode, started: time.Now(),
		ready: make(chan struct{}), done: make(chan struct{}),
		manifests: map[digest.Digest]*fetched{}, blobs: map[digest.Digest]v1.Descriptor{},
	}
	s.live.images[key] = img
	s.spawn(ctx, func(fctx context.Context) {
		err := fctx.Err() // closed
		if err == nil {
			err = run(fctx, img)
		}
		s.live.mu.Lock()
		delete(s.live.images, key)
		img.err = err
		published := img.isReady && img.top != nil
		for _, b := range s.live.blobs {
			if b.waiters == 0 {
				s.abandonLocked(b) // started for a client who left, and no copy wants it now
			}
		}
		s.live.mu.Unlock()
		s.live.publish(img, nil)
		if err != nil && published && mode == modeOnDemand {
			// Clients were given the manifest; those reading its blobs get
			// the failure, and nothing of it is tagged locally.
			s.logger(fctx, src).Error().Err(err).Str("ref", ref).Msg("on-demand copy failed after its manifest was served")
		}
		close(img.done)
	})
	return img
}

// spawn runs fn in the background with a context detached from ctx's
// cancellation (values kept): one client hanging up does not stop work
// others wait for. Close cancels it; onDemandTimeout bounds it. After
// Close, fn gets a context already cancelled: it must then only settle
// its waiters.
func (s *Syncer) spawn(ctx context.Context, fn func(context.Context)) {
	s.closeMu.Lock()
	if s.closed {
		s.closeMu.Unlock()
		cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		cancel()
		go fn(cctx)
		return
	}
	s.wg.Add(1)
	s.closeMu.Unlock()
	go func() {
		defer s.wg.Done()
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), onDemandTimeout)
		defer cancel()
		stop := context.AfterFunc(s.bg, cancel)
		defer stop()
		fn(fctx)
	}()
}

// Blob implements api.Syncer: a blob repo lacks that an on-demand copy in
// flight references is streamed from that copy (started now if its turn
// has not come). Other blobs are never fetched for a client: a digest
// alone would bypass the content rules, the tag filters and onlySigned.
func (s *Syncer) Blob(ctx context.Context, repo string, dgst digest.Digest) (api.SyncedBlob, error) {
	b := s.joinBlob(repo + "@" + dgst.String())
	if b == nil {
		src, d, mirrors, ok := s.live.plannedBlob(repo, dgst)
		if !ok {
			return nil, nil
		}
		b = s.blob(ctx, src, d, mirrors, true)
	}
	select {
	case <-b.started:
	case <-ctx.Done():
		s.leave(b)
		return nil, ctx.Err()
	}
	if rd := b.reader(ctx, func() { s.leave(b) }); rd != nil {
		return rd, nil // its Close leaves b
	}
	defer s.leave(b)
	select {
	case <-b.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return nil, s.answer(ctx, b.src, dgst.String(), b.result())
}

// joinBlob returns the copy in flight for key, counting the caller among
// its waiters (the caller then calls leave), or nil.
func (s *Syncer) joinBlob(key string) *liveBlob {
	s.live.mu.Lock()
	defer s.live.mu.Unlock()
	b := s.live.blobs[key]
	if b != nil {
		b.waiters++
	}
	return b
}

// leave drops a waiter of b; see abandonLocked for when none is left.
func (s *Syncer) leave(b *liveBlob) {
	s.live.mu.Lock()
	defer s.live.mu.Unlock()
	b.waiters--
	if b.waiters == 0 {
		s.abandonLocked(b)
	}
}

// abandonLocked cancels b's copy, nobody waiting for it any more, and
// forgets it so that a later request starts afresh: unless it ended, or an
// image copy in flight references it (that copy joins it when its turn
// comes; a HEAD or a short Range read must not throw the download away).
// s.live.mu is held.
func (s *Syncer) abandonLocked(b *liveBlob) {
	select {
	case <-b.done:
		return
	default:
	}
	if s.live.plannerLocked(b.src.local, b.dgst) != nil {
		return
	}
	if s.live.blobs[b.key] == b {
		delete(s.live.blobs, b.key)
	}
	b.abandon()
}

// blob starts the copy of d into src.local from mirrors (in order) unless
// one is in flight, and returns it with the caller counted among its
// waiters (the caller then calls leave). spool stages its bytes for
// clients reading it meanwhile (on-demand copies; a periodic one is served
// once stored).
func (s *Syncer) blob(ctx context.Context, src source, d v1.Descriptor, mirrors []*upstream, spool bool) *liveBlob {
	key := src.local + "@" + d.Digest.String()
	s.live.mu.Lock()
	defer s.live.mu.Unlock()
	if b := s.live.blobs[key]; b != nil {
		b.waiters++
		return b
	}
	b := newLiveBlob(key, src, d.Digest)
	b.waiters = 1
	s.live.blobs[key] = b
	s.spawn(ctx, func(fctx context.Context) {
		fctx, cancel := context.WithCancel(fctx)
		defer cancel()
		stop := context.AfterFunc(b.abandoned, cancel)
		defer stop()
		err := fctx.Err() // closed
		if err == nil {
			err = s.fetchBlob(fctx, b, d, mirrors, spool)
		}
		s.live.mu.Lock()
		if s.live.blobs[key] == b {
			delete(s.live.blobs, key)
		}
		s.live.mu.Unlock()
		b.finish(err)
		b.abandon() // releases the context; the copy is over
	})
	return b
}

// fetchBlob makes d present in b.src.local: already there, mounted, or
// downloaded from the first mirror that answers.
func (s *Syncer) fetchBlob(ctx context.Context, b *liveBlob, d v1.Descriptor, mirrors []*upstream, spool bool) error {
	src := b.src
	if _, err := s.deps.Registry.Store().Stat(ctx, src.local, d.Digest); err == nil {
		return nil
	}
	if err := storage.ValidateDigest(d.Digest); err != nil {
		return &upstreamError{Kind: kindProtocol, URL: src.upstream + "@" + d.Digest.String(), Err: err}
	}
	if s.mount(ctx, src, d.Digest, mirrors) {
		return nil
	}
	var err error
	for i, u := range mirrors {
		err = s.download(ctx, u, b, d, spool)
		if err == nil || !errors.Is(err, storage.ErrUnavailable) || i == len(mirrors)-1 {
			return err
		}
	}
	return err
}

// mount links a blob another local repository holds (the metadata
// store's blob index says where) instead of downloading it again, once
// upstream confirms it has the blob: a manifest upstream naming a digest
// it does not hold must not obtain another repository's content.
func (s *Syncer) mount(ctx context.Context, src source, dgst digest.Digest, mirrors []*upstream) bool {
	from, err := s.deps.Registry.LocateBlob(ctx, dgst, src.local)
	if err != nil || len(mirrors) == 0 {
		return false
	}
	if ok, err := mirrors[0].blobExists(ctx, src.upstream, dgst); !ok || err != nil {
		return false
	}
	if err := s.deps.Registry.Store().Mount(ctx, from, src.local, dgst); err != nil {
		s.logger(ctx, src).Debug().Err(err).Str("from", from).Str("digest", dgst.String()).Msg("mount failed; downloading")
		return false
	}
	s.deps.Registry.NoteBlob(ctx, src.local, dgst)
	s.m.mounts.WithLabelValues(src.reg.label).Inc()
	return true
}

// download streams one blob from mirror u into a local upload and, through
// b's spool, to the clients reading it meanwhile; the store verifies the
// digest before committing.
func (s *Syncer) download(ctx context.Context, u *upstream, b *liveBlob, d v1.Descriptor, spool bool) error {
	src := b.src
	store := s.deps.Registry.Store()
	return u.retry(ctx, func() error {
		resp, err := u.open(ctx, http.MethodGet, "/v2/"+src.upstream+"/blobs/"+d.Digest.String(), pullScope(src.upstream), "", http.StatusOK)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		size := d.Size
		if size <= 0 {
			size = resp.ContentLength // -1 when not announced
		} else if resp.ContentLength >= 0 && resp.ContentLength != size {
			return &upstreamError{Kind: kindProtocol, URL: src.upstream + "@" + d.Digest.String(),
				Err: fmt.Errorf("%d bytes announced, the manifest says %d", resp.ContentLength, size)}
		}
		up, err := store.NewUpload(ctx, src.local)
		if err != nil {
			return fmt.Errorf("start upload in %s: %w", src.local, err)
		}
		defer up.Close()
		body := &readTracker{r: resp.Body}
		var r io.Reader = body
		if size >= 0 {
			r = io.LimitReader(body, size)
		}
		if size >= 0 && spool {
			if err := b.begin(s.dir, size); err != nil {
				s.logger(ctx, src).Warn().Err(err).Str("digest", d.Digest.String()).Msg("cannot stage the blob; clients wait for the copy")
			} else {
				r = io.TeeReader(r, b.writer())
			}
		}
		n, err := up.Append(ctx, r)
		if err != nil {
			_ = up.Cancel(context.WithoutCancel(ctx))
			if body.err != nil {
				return classifyTransportError(ctx, body.err)
			}
			return fmt.Errorf("store blob %s in %s: %w", d.Digest, src.local, err)
		}
		if _, err := up.Commit(ctx, d.Digest); err != nil {
			_ = up.Cancel(context.WithoutCancel(ctx))
			if errors.Is(err, storage.ErrDigestMismatch) || errors.Is(err, storage.ErrSizeMismatch) {
				return &upstreamError{Kind: kindProtocol, URL: src.upstream + "@" + d.Digest.String(), Err: err}
			}
			return fmt.Errorf("commit blob %s in %s: %w", d.Digest, src.local, err)
		}
		s.deps.Registry.NoteBlob(ctx, src.local, d.Digest)
		s.m.bytes.WithLabelValues(src.reg.label).Add(float64(n))
		return nil
	})
}

// Close stops the copies in flight and waits for them; copies asked for
// afterwards fail at once.
func (s *Syncer) Close() {
	s.closeMu.Lock()
	s.closed = true
	s.closeMu.Unlock()
	s.stop()
	s.wg.Wait()
}
