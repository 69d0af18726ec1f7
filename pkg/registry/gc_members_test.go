package registry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"sync"
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
)

// heldPut is a storage driver whose Put of one digest waits until
// released: a manifest write that is slow (an S3 PUT retried after a 503,
// a GC pause) while another member acts.
type heldPut struct {
	storage.Driver
	dgst    digest.Digest
	reached chan struct{} // closed when Put(dgst) starts waiting
	release chan struct{} // close to let it proceed
}

func (h *heldPut) Put(ctx context.Context, repo string, d digest.Digest, content []byte) error {
	if d == h.dgst {
		close(h.reached)
		<-h.release
	}
	return h.Driver.Put(ctx, repo, d, content)
}

// sharedStores opens the storage and metadata two members share.
func sharedStores(t *testing.T) (*fs.Driver, *bolt.Store) {
	t.Helper()
	dir := t.TempDir()
	store, err := fs.New(filepath.Join(dir, "data"), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	md, err := bolt.Open(filepath.Join(dir, "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = md.Close() })
	return store, md
}

// oldImage stores config and layer in repo, unreferenced (as after a tag
// moved away from them), and returns their descriptors and the body of an
// image manifest that reuses them.
func oldImage(t *testing.T, store storage.Driver, repo string, config, layer []byte) ([]v1.Descriptor, []byte) {
	t.Helper()
	ctx := t.Context()
	var blobs []v1.Descriptor
	for _, b := range [][]byte{config, layer} {
		d := digest.FromBytes(b)
		up, err := store.NewUpload(ctx, repo)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := up.Append(ctx, bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
		if _, err := up.Commit(ctx, d); err != nil {
			t.Fatal(err)
		}
		up.Close()
		blobs = append(blobs, v1.Descriptor{Digest: d, Size: int64(len(b))})
	}
	blobs[0].MediaType, blobs[1].MediaType = v1.MediaTypeImageConfig, v1.MediaTypeImageLayerGzip
	m := v1.Manifest{MediaType: v1.MediaTypeImageManifest, Config: blobs[0], Layers: blobs[1:]}
	m.SchemaVersion = 2
	body, _ := json.Marshal(m)
	return blobs, body
}

// TestGCTwoMembersSlowManifestWrite replays, step by step, one
// interleaving of a push on member A and a collection on member B of the
// same repository (both believe they own it), over shared storage and
// metadata:
//
//  1. A's PutManifest checks that the reused blobs exist (they do: old,
//     unreferenced, so collectable) and starts writing the manifest;
//  2. B runs a whole pass: marks the blobs in index.json, deletes them,
//     clears the mark;
//  3. A's manifest write completes; A updates index.json, sees no mark,
//     and acknowledges the push.
//
// The acknowledged image must be complete.
func TestGCTwoMembersSlowManifestWrite(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	store, md := sharedStores(t)
	const repo = "shared/app"

	// An old layer and config, unreferenced (a tag moved away from them).
	blobs, body := oldImage(t, store, repo, []byte(`{"architecture":"amd64"}`), []byte("old base layer"))
	mdgst := digest.FromBytes(body)

	// Member B over the shared stores, member A over the same stores with
	// its manifest write held.
	b := registry.New(store, md, zerolog.Nop())
	held := &heldPut{Driver: store, dgst: mdgst, reached: make(chan struct{}), release: make(chan struct{})}
	a := registry.New(held, md, zerolog.Nop())
	// The repository exists (another image), so B collects it.
	other := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`)
	if _, err := b.PutManifest(ctx, repo, "other", v1.MediaTypeImageIndex, other, nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Millisecond) // the blobs are older than B's gcDelay

	// 1. A's push: the client HEADed the blobs (present), sends the manifest.
	type result struct {
		res registry.PutResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := a.PutManifest(ctx, repo, "v1", v1.MediaTypeImageManifest, body, nil)
		done <- result{res, err}
	}()
	select {
	case <-held.reached:
	case r := <-done:
		t.Fatalf("push finished before writing its manifest: %v", r.err)
	case <-time.After(10 * time.Second):
		t.Fatal("push never reached its manifest write")
	}

	// 2. B collects the repository meanwhile.
	rep, err := gc.New(b, gc.Options{Delay: time.Millisecond, Log: zerolog.Nop()}).Pass(ctx, "", nil)
	if err != nil || len(rep.Errors) > 0 {
		t.Fatalf("B's pass: %v %q", err, rep.Errors)
	}
	removed := map[string]bool{}
	for _, act := range rep.Actions {
		removed[act.Ref] = true
	}

	// 3. A's write completes.
	close(held.release)
	r := <-done
	if errors.Is(r.err, registry.ErrManifestBlob) {
		return // refused, not acknowledged: the client uploads again
	}
	if r.err != nil {
		t.Fatalf("push: %v", r.err)
	}
	// Acknowledged: it must pull.
	for _, d := range blobs {
		if _, err := store.Stat(ctx, repo, d.Digest); err != nil {
			t.Errorf("push of %s:v1 was acknowledged, but its blob %s is gone (member B's pass removed it: %v): %v",
				repo, d.Digest, removed[d.Digest.String()], err)
		}
	}
	if got, err := a.Resolve(ctx, repo, "v1"); err != nil || got.Digest != mdgst.String() {
		t.Errorf("Resolve(v1) = %s, %v; want %s", got.Digest, err, mdgst)
	}
}

// heldIndex is a storage driver whose first PutIndex of a repository,
// once armed, waits until released: a push that read index.json and
// checked its blobs is slow to write it back.
type heldIndex struct {
	storage.Driver
	repo    string
	armed   chan struct{} // closed: hold the next PutIndex of repo
	reached chan struct{}
	release chan struct{}
	once    sync.Once
}

func (h *heldIndex) PutIndex(ctx context.Context, repo string, data []byte, expect string) error {
	select {
	case <-h.armed:
		if repo == h.repo {
			held := false
			h.once.Do(func() { held = true })
			if held {
				close(h.reached)
				<-h.release
			}
		}
	default:
	}
	return h.Driver.PutIndex(ctx, repo, data, expect)
}

// TestGCTwoMembersSlowIndexWrite: member A's push read index.json (no
// mark), found its reused blobs present, and is slow to write the index
// back; member B meanwhile marks, deletes and unmarks those blobs, which
// leaves index.json as it was byte for byte but for the mark's trace. A's
// compare-and-set must fail, and the retry must refuse the push.
func TestGCTwoMembersSlowIndexWrite(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	store, md := sharedStores(t)
	const repo = "shared/app"
	blobs, body := oldImage(t, store, repo, []byte(`{"architecture":"arm64"}`), []byte("old layer"))

	b := registry.New(store, md, zerolog.Nop())
	held := &heldIndex{Driver: store, repo: repo, armed: make(chan struct{}), reached: make(chan struct{}), release: make(chan struct{})}
	a := registry.New(held, md, zerolog.Nop())
	other := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`)
	if _, err := b.PutManifest(ctx, repo, "other", v1.MediaTypeImageIndex, other, nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Millisecond) // the blobs are older than B's gcDelay

	close(held.armed)
	type result struct {
		err error
	}
	done := make(chan result, 1)
	go func() {
		_, err := a.PutManifest(ctx, repo, "v1", v1.MediaTypeImageManifest, body, nil)
		done <- result{err}
	}()
	select {
	case <-held.reached:
	case r := <-done:
		t.Fatalf("push finished before writing index.json: %v", r.err)
	case <-time.After(10 * time.Second):
		t.Fatal("push never reached its index write")
	}
	rep, err := gc.New(b, gc.Options{Delay: time.Millisecond, Log: zerolog.Nop()}).Pass(ctx, "", nil)
	if err != nil || len(rep.Errors) > 0 {
		t.Fatalf("B's pass: %v %q", err, rep.Errors)
	}
	if len(rep.Actions) == 0 {
		t.Fatal("B's pass removed nothing; the interleaving was not reproduced")
	}
	close(held.release)
	r := <-done
	if errors.Is(r.err, registry.ErrManifestBlob) {
		return // refused, not acknowledged
	}
	if r.err != nil {
		t.Fatalf("push: %v", r.err)
	}
	for _, d := range blobs {
		if _, err := store.Stat(ctx, repo, d.Digest); err != nil {
			t.Errorf("push acknowledged, but its blob %s is gone: %v", d.Digest, err)
		}
	}
}
