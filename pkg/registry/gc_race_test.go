package registry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/gc"
	"github.com/berthreg/berth/pkg/meta/bolt"
	"github.com/berthreg/berth/pkg/registry"
	"github.com/berthreg/berth/pkg/storage"
	"github.com/berthreg/berth/pkg/storage/fs"
	"github.com/berthreg/berth/pkg/storage/s3"
)

// The race tests prove, in process, the guarantee of garbage collection:
// no manifest push that was acknowledged ever loses a blob, even when
// collection runs with gcDelay near zero while clients push images that
// reuse old blobs (uploading only what a HEAD says is missing), retag and
// untag. A push refused with ErrManifestBlob was not acknowledged: the
// client uploads what is missing and tries again.

// TestGCRaceOneMember: fs + bolt, one Registry, pushers against a
// collector running passes back to back.
func TestGCRaceOneMember(t *testing.T) {
	t.Parallel()
	reg := newFSRegistry(t)
	r := runRace(t, raceOpts{
		repo: "race/app", members: []*registry.Registry{reg},
		workers: 4, pool: 10, tags: 2, pushes: 300, limit: 6 * time.Second,
	})
	r.verify(t, "after the race", true)
	r.finalPass(t)
	r.verify(t, "after a final pass", true)
}

// TestGCRaceIndexes is TestGCRaceOneMember with multi-platform images:
// each push stores two child manifests by digest, then the index over them
// under a tag, as clients do.
func TestGCRaceIndexes(t *testing.T) {
	t.Parallel()
	reg := newFSRegistry(t)
	r := runRace(t, raceOpts{
		repo: "race/multi", members: []*registry.Registry{reg},
		workers: 4, pool: 6, tags: 2, pushes: 200, limit: 8 * time.Second, indexes: true, think: 30 * time.Millisecond,
	})
	r.verify(t, "after the race", true)
	r.finalPass(t)
	r.verify(t, "after a final pass", true)
}

// TestGCRaceTwoMembers: two Registries over one S3 bucket (versitygw) and
// one set of DynamoDB tables (dynalite), both pushing to and both
// collecting the same repository at once, as two members do while both
// believe they own it. Metadata written by overlapping members may be
// stale until the repository is rebuilt (as at start); storage, the truth,
// must hold every acknowledged image throughout.
func TestGCRaceTwoMembers(t *testing.T) {
	t.Parallel()
	s3URL, dynURL := startS3(t), startDynamo(t)
	var members []*registry.Registry
	for i := range 2 {
		// Manifest writes are sometimes slow, as S3 PUTs are (a retry
		// after a 503 waits in backoff).
		store := &slowPut{Driver: openS3(t, s3URL, "berth-gc-race"), rng: rand.New(rand.NewPCG(uint64(i), 1))}
		md := openDynamo(t, dynURL, "race")
		members = append(members, registry.New(store, md, zerolog.Nop().With().Int("member", i).Logger()))
	}
	r := runRace(t, raceOpts{
		repo: "race/shared", members: members,
		workers: 4, pool: 8, tags: 1, pushes: 300, limit: 15 * time.Second, cleanup: true,
	})
	r.verify(t, "after the race, before any rebuild", false)
	for i, m := range members {
		if _, err := m.RebuildRepo(t.Context(), r.o.repo); err != nil {
			t.Fatalf("member %d: RebuildRepo: %v", i, err)
		}
	}
	r.verify(t, "after rebuilding metadata", true)
	r.finalPass(t)
	r.verify(t, "after a final pass", true)
}

// slowPut delays one Put (manifest write) in four by up to 150 ms.
type slowPut struct {
	*s3.Driver
	mu  sync.Mutex
	rng *rand.Rand
}

func (s *slowPut) Put(ctx context.Context, repo string, d digest.Digest, content []byte) error {
	s.mu.Lock()
	var delay time.Duration
	if s.rng.IntN(4) == 0 {
		delay = time.Duration(s.rng.Int64N(int64(150 * time.Millisecond)))
	}
	s.mu.Unlock()
	time.Sleep(delay)
	return s.Driver.Put(ctx, repo, d, content)
}

func newFSRegistry(t *testing.T) *registry.Registry {
	t.Helper()
	dir := t.TempDir()
	store, err := fs.New(filepath.Join(dir, "data"), zerolog.Nop())
	if err != nil {
		t.Fatalf("fs.New: %v", err)
	}
	md, err := bolt.Open(filepath.Join(dir, "meta.db"))
	if err != nil {
		t.Fatalf("bolt.Open: %v", err)
	}
	t.Cleanup(func() { _ = md.Close() })
	return registry.New(store, md, zerolog.Nop())
}

// raceHardLimit bounds a race that has not yet done enough work.
const raceHardLimit = 2 * time.Minute

type raceOpts struct {
	repo    string
	members []*registry.Registry // worker w uses members[w%len]; each runs a collector
	workers int
	pool    int           // old blobs every image reuses some of
	tags    int           // tags per worker
	pushes  int64         // stop after this many acknowledged pushes...
	limit   time.Duration // ...or this long
	think   time.Duration // pause between a client's child and index pushes, up to
	cleanup bool          // workers delete the manifests their tags leave by digest
	indexes bool
}

// expect is what a tag must name at the end, as its worker saw it.
type expect struct {
	known   bool // false: the last operation on the tag failed oddly
	deleted bool
	digest  digest.Digest
}

// pushable is a manifest a client holds, with the blobs it needs.
type pushable struct {
	mt       string
	body     []byte
	digest   digest.Digest
	blobs    []v1.Descriptor
	children []pushable // for an index: pushed by digest first
}

type race struct {
	o       raceOpts
	pool    map[digest.Digest]bool
	content sync.Map // digest -> []byte: everything a client may upload

	attempts, acked, refused, gaveUp, failed atomic.Int64 // manifest pushes (tags)
	pulls, metaMisses                        atomic.Int64 // checks of acknowledged tags during the race
	uploads, reused, uploadErrs              atomic.Int64 // blobs
	retags, untags, deletes                  atomic.Int64
	passes, removedBlobs, removedPool        atomic.Int64
	passTime                                 atomic.Int64 // total ns
	removedManifests, gcErrs                 atomic.Int64

	mu       sync.Mutex
	samples  []string          // first odd errors, for the log
	expected map[string]expect // tag -> end state
}

func (r *race) sample(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.samples) < 12 {
		r.samples = append(r.samples, fmt.Sprintf(format, args...))
	}
}

// runRace pushes and collects concurrently until enough pushes were
// acknowledged or the time is up, and returns the outcome to verify.
func runRace(t *testing.T, o raceOpts) *race {
	t.Helper()
	r := &race{o: o, pool: map[digest.Digest]bool{}, expected: map[string]expect{}}
	ctx := t.Context()
	// The pool: stored once, then unreferenced until images use it, so
	// collection is free to take any of it at any time (gcDelay ~0).
	for i := range o.pool {
		b := bytes.Repeat([]byte(fmt.Sprintf("pool layer %d|", i)), 64)
		d := r.remember(b)
		r.pool[d] = true
		if err := r.upload(ctx, o.members[0], d); err != nil {
			t.Fatalf("upload pool blob: %v", err)
		}
	}
	poolList := slices.Sorted(maps.Keys(r.pool))

	var stop atomic.Bool
	var gcs, workers sync.WaitGroup
	// Passes stop mid-way when the race ends, as at shutdown.
	gcCtx, stopGC := context.WithCancel(ctx)
	defer stopGC()
	for i, m := range o.members {
		gcs.Go(func() { r.collect(gcCtx, i, m, &stop) })
	}
	results := make([]map[string]expect, o.workers)
	for w := range o.workers {
		workers.Go(func() {
			results[w] = r.worker(t, ctx, w, o.members[w%len(o.members)], poolList, &stop)
		})
	}
	start := time.Now()
	// Run for o.limit or o.pushes, but on a slow or busy machine go on
	// until the race has done enough to mean something (bounded by
	// raceHardLimit): a slow machine must not fail the test.
	enough := func() bool {
		return r.acked.Load() >= 50 && r.passes.Load() >= 10 && r.removedPool.Load() > 0
	}
	for !t.Failed() && time.Since(start) < raceHardLimit &&
		(r.acked.Load() < o.pushes && time.Since(start) < o.limit || !enough()) {
		time.Sleep(10 * time.Millisecond)
	}
	stop.Store(true)
	elapsed := time.Since(start)
	workers.Wait()
	stopGC()
	gcs.Wait()
	for _, res := range results {
		maps.Copy(r.expected, res)
	}

	t.Logf("%s: %v, %d members: %d tag pushes acknowledged of %d attempts (%d refused with ErrManifestBlob and retried, %d given up after retries, %d failed otherwise); %d retags, %d untags, %d deletes by digest; blobs: %d uploaded, %d reused after a HEAD, %d upload errors",
		o.repo, elapsed.Round(time.Millisecond), len(o.members), r.acked.Load(), r.attempts.Load(), r.refused.Load(), r.gaveUp.Load(), r.failed.Load(),
		r.retags.Load(), r.untags.Load(), r.deletes.Load(), r.uploads.Load(), r.reused.Load(), r.uploadErrs.Load())
	t.Logf("%s: %d checks of acknowledged tags during the race (%d metadata lookups disagreed)", o.repo, r.pulls.Load(), r.metaMisses.Load())
	t.Logf("%s: %d gc passes (%v each on average) removed %d manifests and %d blobs (%d of them pool blobs, later reused); %d pass errors",
		o.repo, r.passes.Load(), time.Duration(r.passTime.Load()/max(1, r.passes.Load())).Round(time.Millisecond), r.removedManifests.Load(), r.removedBlobs.Load(), r.removedPool.Load(), r.gcErrs.Load())
	for _, s := range r.samples {
		t.Logf("  %s", s)
	}
	if t.Failed() {
		return r // stopped early; the errors tell
	}
	if r.acked.Load() < 50 || r.passes.Load() < 10 {
		t.Errorf("race too small to mean anything: %d acknowledged pushes, %d passes", r.acked.Load(), r.passes.Load())
	}
	if r.removedPool.Load() == 0 {
		t.Errorf("no pass ever removed a pool blob: the race between reuse and collection was not exercised")
	}
	return r
}

// collect runs garbage collection passes back to back until stop.
func (r *race) collect(ctx context.Context, member int, reg *registry.Registry, stop *atomic.Bool) {
	c := gc.New(reg, gc.Options{Delay: time.Nanosecond, Log: zerolog.Nop()})
	for !stop.Load() {
		start := time.Now()
		rep, err := c.Pass(ctx, "", nil)
		if ctx.Err() != nil {
			return // cut short by the end of the race
		}
		r.passes.Add(1)
		r.passTime.Add(int64(time.Since(start)))
		if err != nil {
			r.gcErrs.Add(1)
			r.sample("member %d: gc pass: %v", member, err)
		}
		for _, e := range rep.Errors {
			r.gcErrs.Add(1)
			r.sample("member %d: gc: %s", member, e)
		}
		for _, a := range rep.Actions {
			switch a.Kind {
			case "blob":
				r.removedBlobs.Add(1)
				if r.pool[digest.Digest(a.Ref)] {
					r.removedPool.Add(1)
				}
			case "manifest":
				r.removedManifests.Add(1)
			}
		}
	}
}

// worker pushes new images, retags and untags its own tags until stop,
// and returns what each of its tags must name at the end.
func (r *race) worker(t *testing.T, ctx context.Context, w int, reg *registry.Registry, pool []digest.Digest, stop *atomic.Bool) map[string]expect {
	rng := rand.New(rand.NewPCG(uint64(w), 7))
	var tags []string
	for i := range max(1, r.o.tags) {
		tags = append(tags, fmt.Sprintf("w%d-%c", w, 'a'+i))
	}
	state := map[string]expect{}
	var pushed []pushable // acknowledged, for retags
	for n := 0; !stop.Load(); n++ {
		tag := tags[rng.IntN(len(tags))]
		// Before moving or deleting the tag, pull what it names now.
		if st, ok := state[tag]; ok && st.known && !st.deleted {
			r.pullCheck(t, ctx, reg, tag, st.digest)
		}
		prev := state[tag]
		op := rng.IntN(10)
		switch {
		case op < 5 || len(pushed) == 0: // a new image reusing the pool
			var p pushable
			if r.o.indexes {
				p = r.newIndex(w, n, rng, pool)
			} else {
				p = r.newImage(fmt.Sprintf("w%d-%d", w, n), rng, pool)
			}
			if st, ok := r.push(ctx, reg, tag, p); ok {
				pushed = append(pushed, p)
				state[tag] = st
			} else if !st.known {
				state[tag] = st
			}
		case op < 7: // retag: the same manifest again under this tag
			p := pushed[rng.IntN(len(pushed))]
			r.retags.Add(1)
			if st, ok := r.push(ctx, reg, tag, p); ok || !st.known {
				state[tag] = st
			}
		default: // untag
			err := reg.DeleteManifest(ctx, r.o.repo, tag)
			switch {
			case err == nil || errors.Is(err, registry.ErrManifestUnknown):
				r.untags.Add(1)
				state[tag] = expect{known: true, deleted: true}
			default:
				r.sample("untag %s: %v", tag, err)
				state[tag] = expect{}
			}
		}
		if r.o.cleanup && prev.known && !prev.deleted && prev.digest != state[tag].digest {
			r.cleanup(ctx, reg, state, prev.digest)
		}
	}
	return state
}

// cleanup deletes manifest d by digest, as a client cleaning up after
// itself does, unless one of the worker's tags still names it.
func (r *race) cleanup(ctx context.Context, reg *registry.Registry, state map[string]expect, d digest.Digest) {
	for _, st := range state {
		if st.known && !st.deleted && st.digest == d {
			return
		}
	}
	err := reg.DeleteManifest(ctx, r.o.repo, d.String())
	switch {
	case err == nil:
		r.deletes.Add(1)
	case errors.Is(err, registry.ErrManifestUnknown):
	default:
		r.sample("delete %s: %v", d, err)
	}
}

// remember stores content for later uploads and returns its digest.
func (r *race) remember(b []byte) digest.Digest {
	d := digest.FromBytes(b)
	r.content.Store(d, b)
	return d
}

// newImage builds an image of a fresh config and 1–2 pool layers.
func (r *race) newImage(seed string, rng *rand.Rand, pool []digest.Digest) pushable {
	cfgBytes := []byte(`{"seed":"` + seed + `"}`)
	cfg := v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: r.remember(cfgBytes), Size: int64(len(cfgBytes))}
	var layers []v1.Descriptor
	for _, i := range rng.Perm(len(pool))[:1+rng.IntN(2)] {
		b, _ := r.content.Load(pool[i])
		layers = append(layers, v1.Descriptor{MediaType: v1.MediaTypeImageLayerGzip, Digest: pool[i], Size: int64(len(b.([]byte)))})
	}
	m := v1.Manifest{MediaType: v1.MediaTypeImageManifest, Config: cfg, Layers: layers}
	m.SchemaVersion = 2
	body, _ := json.Marshal(m)
	return pushable{mt: v1.MediaTypeImageManifest, body: body, digest: digest.FromBytes(body), blobs: append([]v1.Descriptor{cfg}, layers...)}
}

// newIndex builds an index over two new images.
func (r *race) newIndex(w, n int, rng *rand.Rand, pool []digest.Digest) pushable {
	var children []pushable
	var descs []v1.Descriptor
	for _, arch := range []string{"amd64", "arm64"} {
		c := r.newImage(fmt.Sprintf("w%d-%d-%s", w, n, arch), rng, pool)
		children = append(children, c)
		descs = append(descs, v1.Descriptor{MediaType: c.mt, Digest: c.digest, Size: int64(len(c.body)),
			Platform: &v1.Platform{OS: "linux", Architecture: arch}})
	}
	x := v1.Index{MediaType: v1.MediaTypeImageIndex, Manifests: descs}
	x.SchemaVersion = 2
	body, _ := json.Marshal(x)
	return pushable{mt: v1.MediaTypeImageIndex, body: body, digest: digest.FromBytes(body), children: children}
}

// push sends p under tag as a client does: upload the blobs a HEAD says
// are missing (children first, by digest), then the manifest; on
// ErrManifestBlob start again, a few times. It reports the tag's new state
// and whether the push was acknowledged; a refused push leaves the tag as
// it was (known), any other failure leaves it unknown.
func (r *race) push(ctx context.Context, reg *registry.Registry, tag string, p pushable) (expect, bool) {
	for attempt := 0; attempt < 8; attempt++ {
		if err := r.ensure(ctx, reg, p); err != nil {
			r.sample("push %s: prepare: %v", tag, err)
			continue
		}
		r.attempts.Add(1)
		res, err := reg.PutManifest(ctx, r.o.repo, tag, p.mt, p.body, nil)
		switch {
		case err == nil && res.Digest == p.digest:
			r.acked.Add(1)
			return expect{known: true, digest: p.digest}, true
		case err == nil:
			r.failed.Add(1)
			r.sample("push %s: stored %s, want %s", tag, res.Digest, p.digest)
			return expect{}, false
		case errors.Is(err, registry.ErrManifestBlob):
			r.refused.Add(1)
		case errors.Is(err, storage.ErrIndexConflict) && !strings.Contains(err.Error(), "record manifest"):
			// index.json kept changing: not written, not acknowledged.
			r.failed.Add(1)
			r.sample("push %s: %v", tag, err)
			return expect{known: true}, false
		default:
			r.failed.Add(1)
			r.sample("push %s: %v", tag, err)
			return expect{}, false
		}
	}
	r.gaveUp.Add(1)
	return expect{known: true}, false
}

// ensure makes p's blobs (and children manifests) present as a client
// would: HEAD each blob, upload the missing ones.
func (r *race) ensure(ctx context.Context, reg *registry.Registry, p pushable) error {
	for _, c := range p.children {
		if err := r.ensure(ctx, reg, c); err != nil {
			return err
		}
		if _, err := reg.PutManifest(ctx, r.o.repo, c.digest.String(), c.mt, c.body, nil); err != nil {
			return fmt.Errorf("child %s: %w", c.digest, err)
		}
	}
	if len(p.children) > 0 && r.o.think > 0 {
		// The client pushes the index a moment after its children.
		time.Sleep(time.Duration(rand.Int64N(int64(r.o.think))))
	}
	for _, b := range p.blobs {
		_, err := reg.Store().Stat(ctx, r.o.repo, b.Digest)
		if err == nil {
			r.reused.Add(1)
			continue
		}
		if !errors.Is(err, storage.ErrBlobUnknown) {
			return err
		}
		if err := r.upload(ctx, reg, b.Digest); err != nil {
			r.uploadErrs.Add(1)
			return err
		}
		r.uploads.Add(1)
	}
	return nil
}

// upload stores a remembered blob through an upload session.
func (r *race) upload(ctx context.Context, reg *registry.Registry, d digest.Digest) error {
	v, ok := r.content.Load(d)
	if !ok {
		return fmt.Errorf("no content for %s", d)
	}
	up, err := reg.Store().NewUpload(ctx, r.o.repo)
	if err != nil {
		return err
	}
	defer up.Close()
	if _, err := up.Append(ctx, bytes.NewReader(v.([]byte))); err != nil {
		return err
	}
	_, err = up.Commit(ctx, d)
	return err
}

// pullCheck verifies, during the race, that tag still names the manifest
// last acknowledged for it, intact in storage, and that the member
// resolves it through metadata (an error only when metadata is expected
// to be exact, with one member).
func (r *race) pullCheck(t *testing.T, ctx context.Context, reg *registry.Registry, tag string, want digest.Digest) {
	r.pulls.Add(1)
	store := reg.Store()
	data, _, err := store.Index(ctx, r.o.repo)
	if err != nil {
		t.Errorf("during the race: Index: %v", err)
		return
	}
	var idx v1.Index
	if err := json.Unmarshal(data, &idx); err != nil {
		t.Errorf("during the race: index.json: %v", err)
		return
	}
	var got digest.Digest
	for _, d := range idx.Manifests {
		if d.Annotations[v1.AnnotationRefName] == tag {
			got = d.Digest
		}
	}
	if got != want {
		t.Errorf("during the race: tag %s names %q in index.json, want the acknowledged %s", tag, got, want)
		return
	}
	if problem := r.checkManifest(ctx, store, want, map[digest.Digest]string{}); problem != "" {
		t.Errorf("during the race: acknowledged %s:%s (%s) is damaged: %s", r.o.repo, tag, want, problem)
	}
	m, err := reg.Resolve(ctx, r.o.repo, tag)
	if err != nil || m.Digest != want.String() {
		r.metaMisses.Add(1)
		if len(r.o.members) == 1 {
			t.Errorf("during the race: Resolve(%s) = %s, %v; want %s", tag, m.Digest, err, want)
		} else {
			r.sample("metadata: Resolve(%s) = %s, %v; want %s", tag, m.Digest, err, want)
		}
	}
}

// finalPass runs one more pass on every member, one after the other.
func (r *race) finalPass(t *testing.T) {
	t.Helper()
	for i, m := range r.o.members {
		rep, err := gc.New(m, gc.Options{Delay: time.Nanosecond, Log: zerolog.Nop()}).Pass(t.Context(), "", nil)
		if err != nil || len(rep.Errors) > 0 {
			t.Errorf("member %d: final pass: %v %q", i, err, rep.Errors)
		}
	}
}

// verify checks, in storage (the truth), that every tag a worker last
// pushed with success names that manifest, that the manifest and all it
// references are stored intact, that every untagged tag is gone, and that
// no manifest index.json lists misses content. It then checks that each
// member resolves the tags through metadata: a failure there is an error
// when strictMeta, else only logged.
func (r *race) verify(t *testing.T, phase string, strictMeta bool) {
	t.Helper()
	ctx := t.Context()
	store := r.o.members[0].Store()
	data, _, err := store.Index(ctx, r.o.repo)
	if err != nil {
		t.Fatalf("%s: Index: %v", phase, err)
	}
	var idx v1.Index
	if err := json.Unmarshal(data, &idx); err != nil {
		t.Fatalf("%s: index.json: %v", phase, err)
	}
	tags := map[string]digest.Digest{}
	for _, d := range idx.Manifests {
		if tag := d.Annotations[v1.AnnotationRefName]; tag != "" {
			tags[tag] = d.Digest
		}
	}
	if len(idx.Annotations) > 0 {
		t.Logf("%s: index.json annotations: %v", phase, idx.Annotations)
	}

	checked := map[digest.Digest]string{} // manifest -> problem ("" if fine)
	var live, deleted, unknown, lost int
	for _, tag := range slices.Sorted(maps.Keys(r.expected)) {
		exp := r.expected[tag]
		got, present := tags[tag]
		switch {
		case !exp.known:
			unknown++
		case exp.deleted:
			deleted++
			if present {
				t.Errorf("%s: tag %s was deleted with success but names %s", phase, tag, got)
			}
		case !present:
			lost++
			t.Errorf("%s: acknowledged tag %s (%s) is missing from index.json", phase, tag, exp.digest)
		case got != exp.digest:
			lost++
			t.Errorf("%s: tag %s names %s, want the acknowledged %s", phase, tag, got, exp.digest)
		default:
			live++
			if problem := r.checkManifest(ctx, store, exp.digest, checked); problem != "" {
				lost++
				t.Errorf("%s: acknowledged %s:%s (%s) is damaged: %s", phase, r.o.repo, tag, exp.digest, problem)
			}
		}
	}
	for _, d := range idx.Manifests {
		if problem := r.checkManifest(ctx, store, d.Digest, checked); problem != "" {
			t.Errorf("%s: index.json lists %s (tag %q) but %s", phase, d.Digest, d.Annotations[v1.AnnotationRefName], problem)
		}
	}
	t.Logf("%s: %d acknowledged tags verified intact, %d deleted tags absent, %d tags of unknown outcome skipped, %d problems; %d manifests in index.json",
		phase, live, deleted, unknown, lost, len(idx.Manifests))

	// Through metadata, on every member.
	stale := 0
	for i, m := range r.o.members {
		for _, tag := range slices.Sorted(maps.Keys(r.expected)) {
			exp := r.expected[tag]
			if !exp.known {
				continue
			}
			res, err := m.Resolve(ctx, r.o.repo, tag)
			var problem string
			switch {
			case exp.deleted && err == nil:
				problem = fmt.Sprintf("deleted tag %s resolves to %s", tag, res.Digest)
			case exp.deleted && !errors.Is(err, registry.ErrManifestUnknown):
				problem = fmt.Sprintf("deleted tag %s: %v", tag, err)
			case !exp.deleted && err != nil:
				problem = fmt.Sprintf("acknowledged tag %s does not resolve: %v", tag, err)
			case !exp.deleted && res.Digest != exp.digest.String():
				problem = fmt.Sprintf("tag %s resolves to %s, want %s", tag, res.Digest, exp.digest)
			}
			if problem == "" {
				continue
			}
			stale++
			if strictMeta {
				t.Errorf("%s: member %d: %s", phase, i, problem)
			} else {
				t.Logf("%s: member %d: metadata: %s", phase, i, problem)
			}
		}
	}
	if stale > 0 && !strictMeta {
		t.Logf("%s: %d tag lookups through metadata disagreed with storage (stale until rebuilt)", phase, stale)
	}
}

// checkManifest verifies that manifest d is stored intact, with every blob
// and child it references; it returns the problem, or "".
func (r *race) checkManifest(ctx context.Context, store storage.Driver, d digest.Digest, checked map[digest.Digest]string) string {
	if p, ok := checked[d]; ok {
		return p
	}
	problem := func() string {
		body, err := readBlob(ctx, store, r.o.repo, d)
		if err != nil {
			return "manifest content: " + err.Error()
		}
		var doc struct {
			Config    *v1.Descriptor  `json:"config"`
			Layers    []v1.Descriptor `json:"layers"`
			Manifests []v1.Descriptor `json:"manifests"`
		}
		if err := json.Unmarshal(body, &doc); err != nil {
			return "manifest: " + err.Error()
		}
		blobs := doc.Layers
		if doc.Config != nil {
			blobs = append(blobs, *doc.Config)
		}
		var probs []string
		for _, b := range blobs {
			if _, err := readBlob(ctx, store, r.o.repo, b.Digest); err != nil {
				pool := ""
				if r.pool[b.Digest] {
					pool = " (a reused pool blob)"
				}
				probs = append(probs, fmt.Sprintf("blob %s%s: %v", b.Digest, pool, err))
			}
		}
		for _, c := range doc.Manifests {
			if p := r.checkManifest(ctx, store, c.Digest, checked); p != "" {
				probs = append(probs, fmt.Sprintf("child %s: %s", c.Digest, p))
			}
		}
		return strings.Join(probs, "; ")
	}()
	checked[d] = problem
	return problem
}

// readBlob reads a blob and verifies its digest.
func readBlob(ctx context.Context, store storage.Driver, repo string, d digest.Digest) ([]byte, error) {
	rd, err := store.Open(ctx, repo, d)
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	b, err := io.ReadAll(rd)
	if err != nil {
		return nil, err
	}
	if got := digest.FromBytes(b); got != d {
		return nil, fmt.Errorf("content hashes to %s", got)
	}
	return b, nil
}
