package registry

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/meta"
	"github.com/berthreg/berth/pkg/meta/bolt"
	"github.com/berthreg/berth/pkg/storage"
)

// shutdownMidCommit is a bolt store that cancels the collector's context
// when a metadata delete starts, that is right after index.json changed (a
// SIGTERM between the two writes), and then, like the DynamoDB store,
// refuses a write whose context is done.
type shutdownMidCommit struct {
	*bolt.Store
	cancel context.CancelFunc
}

func (s *shutdownMidCommit) DeleteTag(ctx context.Context, repo, tag, version string) error {
	s.cancel()
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.Store.DeleteTag(ctx, repo, tag, version)
}

func (s *shutdownMidCommit) DeleteManifest(ctx context.Context, repo, dgst, version string) ([]string, error) {
	s.cancel()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return s.Store.DeleteManifest(ctx, repo, dgst, version)
}

// A shutdown after DeleteTagIf changed index.json does not leave the tag
// resolving in metadata.
func TestDeleteTagIfShutdownMidCommit(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	d := e.put(t, "repo", "v1", MediaTypeOCIManifest, e.image(t, "repo", "one", nil))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	reg := New(e.store, &shutdownMidCommit{Store: e.md, cancel: cancel}, zerolog.Nop())
	ok, err := reg.DeleteTagIf(ctx, "repo", "v1", d.Digest, time.Now())
	if !ok || err != nil {
		t.Fatalf("DeleteTagIf = %v, %v; want true, nil", ok, err)
	}
	if ctx.Err() == nil {
		t.Fatal("the metadata write did not run")
	}
	if _, err := e.md.Tag(t.Context(), "repo", "v1"); !errors.Is(err, meta.ErrNotFound) {
		t.Errorf("tag still in metadata after index.json dropped it: %v", err)
	}
	checkMetaCurrent(t, e, "repo")
}

// A shutdown after DeleteUnreachableSet changed index.json does not leave
// the manifests resolving in metadata.
func TestDeleteUnreachableSetShutdownMidCommit(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.putUntagged(t, "repo", e.image(t, "repo", "a", nil))
	b := e.putUntagged(t, "repo", e.image(t, "repo", "b", nil))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	reg := New(e.store, &shutdownMidCommit{Store: e.md, cancel: cancel}, zerolog.Nop())
	done, err := reg.DeleteUnreachableSet(ctx, "repo", []digest.Digest{a.Digest, b.Digest}, false)
	if len(done) != 2 || err != nil {
		t.Fatalf("DeleteUnreachableSet = %v, %v; want both, nil", done, err)
	}
	for _, d := range done {
		if _, err := e.md.Manifest(t.Context(), "repo", d.String()); !errors.Is(err, meta.ErrNotFound) {
			t.Errorf("manifest %s still in metadata after index.json dropped it: %v", d, err)
		}
	}
	checkMetaCurrent(t, e, "repo")
}

// Cancellation before the commit starts still stops the work: nothing
// changes.
func TestGCDeletesCancelledBeforeCommit(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tagged := e.put(t, "repo", "v1", MediaTypeOCIManifest, e.image(t, "repo", "one", nil))
	loose := e.putUntagged(t, "repo", e.image(t, "repo", "two", nil))
	_, before := storedIndex(t, e.store, "repo")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if ok, err := e.reg.DeleteTagIf(ctx, "repo", "v1", tagged.Digest, time.Now()); ok || !errors.Is(err, context.Canceled) {
		t.Errorf("DeleteTagIf(cancelled) = %v, %v; want false, context.Canceled", ok, err)
	}
	if done, err := e.reg.DeleteUnreachableSet(ctx, "repo", []digest.Digest{loose.Digest}, false); len(done) != 0 || !errors.Is(err, context.Canceled) {
		t.Errorf("DeleteUnreachableSet(cancelled) = %v, %v; want none, context.Canceled", done, err)
	}
	if _, after := storedIndex(t, e.store, "repo"); after != before {
		t.Errorf("index.json changed from %s to %s", before, after)
	}
	if _, err := e.md.Tag(t.Context(), "repo", "v1"); err != nil {
		t.Errorf("tag v1: %v", err)
	}
	if _, err := e.md.Manifest(t.Context(), "repo", loose.Digest.String()); err != nil {
		t.Errorf("manifest %s: %v", loose.Digest, err)
	}
}

// checkMetaCurrent fails unless metadata records the version of repo's
// index.json, so nothing waits for a rebuild.
func checkMetaCurrent(t *testing.T, e *env, repo string) {
	t.Helper()
	x, _ := storedIndex(t, e.store, repo)
	got, err := e.md.Version(t.Context(), repo)
	if err != nil || got != contentVersion(x) {
		t.Errorf("metadata version = %q, %v; want %q", got, err, contentVersion(x))
	}
}

// putUntagged pushes an image manifest by digest.
func (e *env) putUntagged(t *testing.T, repo string, body []byte) v1.Descriptor {
	t.Helper()
	return e.put(t, repo, digest.FromBytes(body).String(), MediaTypeOCIManifest, body)
}

// slowDeletes is a store whose every blob Delete takes step of the
// registry's clock.
type slowDeletes struct {
	storage.Driver
	clock *time.Time
	step  time.Duration
}

func (s slowDeletes) Delete(ctx context.Context, repo string, d digest.Digest) error {
	*s.clock = s.clock.Add(s.step)
	return s.Driver.Delete(ctx, repo, d)
}

// TestDeleteBlobsStopsBeforeTheMarkExpires: pushers stop honouring a mark
// after gcMarkTTL, so a collector whose deletions drag on stops at half
// of it and leaves the rest, still present, to its next pass.
func TestDeleteBlobsStopsBeforeTheMarkExpires(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	now := time.Now().Add(time.Hour)
	e.reg.store = slowDeletes{Driver: e.store, clock: &now, step: 2 * time.Minute}
	e.reg.now = func() time.Time { return now }
	var cands []BlobCandidate
	for i := range 5 {
		d := e.blob(t, "repo", "x", []byte{byte(i)})
		cands = append(cands, BlobCandidate{Digest: d.Digest, Size: d.Size})
	}
	deleted, err := e.reg.DeleteBlobs(ctx, "repo", cands, now)
	if err != nil {
		t.Fatal(err)
	}
	// 2 min per delete: the third starts at 4 min, the fourth would at 6.
	if len(deleted) != 3 {
		t.Errorf("deleted %d blobs; want 3 (stopping past gcMarkTTL/2 = %s)", len(deleted), gcMarkTTL/2)
	}
	for _, c := range cands[len(deleted):] {
		if _, err := e.store.Stat(ctx, "repo", c.Digest); err != nil {
			t.Errorf("blob %s left for the next pass is gone: %v", c.Digest, err)
		}
	}
	x, _, err := e.reg.readIndex(ctx, "repo")
	if err != nil {
		t.Fatal(err)
	}
	if _, marked := x.gcMarkTime(); marked {
		t.Error("the mark is still set after the pass")
	}
}

// TestDeleteTagIfAfterRepush: retention decided to drop v1 when its
// manifest was last written at seen; the client then pushed v1 to the
// same manifest again (index.json may not change at all). The tag stays.
func TestDeleteTagIfAfterRepush(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	body := e.image(t, "repo", "one", nil)
	d := e.put(t, "repo", "v1", MediaTypeOCIManifest, body)
	info, err := e.store.Stat(ctx, "repo", d.Digest)
	if err != nil {
		t.Fatal(err)
	}
	seen := info.ModTime.Add(-time.Second) // the decision predates the push
	if ok, err := e.reg.DeleteTagIf(ctx, "repo", "v1", d.Digest, seen); ok || err != nil {
		t.Errorf("DeleteTagIf of a tag pushed again after the decision = %v, %v; want false, nil", ok, err)
	}
	if m, err := e.reg.Resolve(ctx, "repo", "v1"); err != nil || m.Digest != d.Digest.String() {
		t.Errorf("v1 after the stale decision: %v, %v", m.Digest, err)
	}
	// The decision made after the last push goes through.
	if ok, err := e.reg.DeleteTagIf(ctx, "repo", "v1", d.Digest, info.ModTime); !ok || err != nil {
		t.Errorf("DeleteTagIf with the current push time = %v, %v; want true, nil", ok, err)
	}
}

// failingStat is a store whose Stat fails as an unavailable backend.
type failingStat struct{ storage.Driver }

func (failingStat) Stat(context.Context, string, digest.Digest) (storage.BlobInfo, error) {
	return storage.BlobInfo{}, storage.ErrUnavailable
}

// TestDeleteTagIfCannotCheck: when the push time cannot be checked, the
// tag stays (the collector fails, to retry later).
func TestDeleteTagIfCannotCheck(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	d := e.put(t, "repo", "v1", MediaTypeOCIManifest, e.image(t, "repo", "one", nil))
	reg := New(failingStat{e.store}, e.md, zerolog.Nop())
	if ok, err := reg.DeleteTagIf(ctx, "repo", "v1", d.Digest, time.Now()); ok || !errors.Is(err, storage.ErrUnavailable) {
		t.Errorf("DeleteTagIf with storage unavailable = %v, %v; want false, ErrUnavailable", ok, err)
	}
	if _, err := e.reg.Resolve(ctx, "repo", "v1"); err != nil {
		t.Errorf("v1 after a failed check: %v", err)
	}
}
