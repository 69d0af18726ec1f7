package registry

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berthreg/berth/pkg/storage"
)

var (
	dA = digest.FromString("a")
	dB = digest.FromString("b")
	dC = digest.FromString("c")
)

func descOf(d digest.Digest) v1.Descriptor {
	return v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: d, Size: 42, ArtifactType: "x/y"}
}

// indexOf builds an index from entries.
func indexOf(es ...entry) *ociIndex {
	x := newIndex()
	for _, e := range es {
		d := descOf(e.digest)
		if e.tag != "" {
			d.Annotations = map[string]string{v1.AnnotationRefName: e.tag}
		}
		x.Manifests = append(x.Manifests, d)
	}
	return x
}

func sortEntries(es []entry) []entry {
	es = slices.Clone(es)
	slices.SortFunc(es, func(a, b entry) int {
		return cmp.Or(cmp.Compare(a.digest, b.digest), cmp.Compare(a.tag, b.tag))
	})
	return es
}

func TestIndexOps(t *testing.T) {
	t.Parallel()
	A, B := func(tag string) entry { return entry{dA, tag} }, func(tag string) entry { return entry{dB, tag} }
	put := func(d digest.Digest, tags ...string) func(*ociIndex) {
		return func(x *ociIndex) { x.putManifest(descOf(d), tags) }
	}
	tests := []struct {
		name  string
		start []entry
		op    func(*ociIndex)
		want  []entry
	}{
		{"put untagged", nil, put(dA), []entry{A("")}},
		{"put tagged", nil, put(dA, "t1"), []entry{A("t1")}},
		{"put two tags", nil, put(dA, "t1", "t2"), []entry{A("t1"), A("t2")}},
		{"put untagged again", []entry{A("")}, put(dA), []entry{A("")}},
		{"put untagged when tagged", []entry{A("t1")}, put(dA), []entry{A("t1")}},
		{"tag an untagged manifest", []entry{A("")}, put(dA, "t1"), []entry{A("t1")}},
		{"add a tag", []entry{A("t1")}, put(dA, "t2"), []entry{A("t1"), A("t2")}},
		{"same tag again", []entry{A("t1")}, put(dA, "t1"), []entry{A("t1")}},
		{"tag moves, old manifest kept untagged", []entry{A("t1")}, put(dB, "t1"), []entry{A(""), B("t1")}},
		{"tag moves, old manifest keeps other tag", []entry{A("t1"), A("t2")}, put(dB, "t1"), []entry{A("t2"), B("t1")}},
		{"tag moves onto untagged manifest", []entry{A("t1"), B("")}, put(dB, "t1"), []entry{A(""), B("t1")}},
		{"two tags move", []entry{A("t1"), A("t2")}, put(dB, "t1", "t2"), []entry{A(""), B("t1"), B("t2")}},
		{"other manifests untouched", []entry{A("t1"), B(""), {dC, "t3"}}, put(dB, "t2"), []entry{A("t1"), B("t2"), {dC, "t3"}}},
		{"duplicate tags in one put", nil, put(dA, "t1", "t1"), []entry{A("t1")}},
		{"delete tag", []entry{A("t1")}, func(x *ociIndex) { x.deleteTag("t1") }, []entry{A("")}},
		{"delete one of two tags", []entry{A("t1"), A("t2")}, func(x *ociIndex) { x.deleteTag("t1") }, []entry{A("t2")}},
		{"delete unknown tag", []entry{A("t1")}, func(x *ociIndex) { x.deleteTag("nope") }, []entry{A("t1")}},
		{"delete manifest", []entry{A("t1"), B("t2"), A("t3")}, func(x *ociIndex) { x.deleteManifest(dA) }, []entry{B("t2")}},
		{"delete untagged manifest", []entry{A(""), B("t2")}, func(x *ociIndex) { x.deleteManifest(dA) }, []entry{B("t2")}},
		{"delete unknown manifest", []entry{A("t1")}, func(x *ociIndex) { x.deleteManifest(dB) }, []entry{A("t1")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			x := indexOf(tt.start...)
			tt.op(x)
			if got, want := sortEntries(entries(x)), sortEntries(tt.want); !slices.Equal(got, want) {
				t.Errorf("entries %v, want %v", got, want)
			}
			for _, d := range x.Manifests {
				if d.MediaType != v1.MediaTypeImageManifest || d.Size != 42 || d.ArtifactType != "x/y" {
					t.Errorf("entry %+v lost descriptor fields", d)
				}
				if len(d.Annotations) > 1 || (len(d.Annotations) == 1 && tagOf(d) == "") {
					t.Errorf("entry %+v has annotations other than the ref name", d)
				}
			}
		})
	}
}

func TestIndexPutDropsDescriptorAnnotations(t *testing.T) {
	t.Parallel()
	x := newIndex()
	d := descOf(dA)
	d.Annotations = map[string]string{"foo": "bar", v1.AnnotationRefName: "sneaky"}
	x.putManifest(d, nil)
	x.putManifest(d, []string{"t1"})
	for _, m := range x.Manifests {
		if m.Annotations["foo"] != "" || tagOf(m) == "sneaky" {
			t.Errorf("entry %+v kept the caller's annotations", m)
		}
	}
}

// conflictDriver makes PutIndex fail: on each of the first n calls it
// first changes index.json behind the caller's back (through change), so
// the real compare-and-set fails.
type conflictDriver struct {
	storage.Driver
	mu     sync.Mutex
	n      int
	calls  int
	change func(ctx context.Context, d storage.Driver, repo string) error
}

func (c *conflictDriver) PutIndex(ctx context.Context, repo string, data []byte, expect string) error {
	c.mu.Lock()
	c.calls++
	interfere := c.calls <= c.n
	c.mu.Unlock()
	if interfere {
		if c.change == nil {
			return fmt.Errorf("injected: %w", storage.ErrIndexConflict)
		}
		if err := c.change(ctx, c.Driver, repo); err != nil {
			return err
		}
	}
	return c.Driver.PutIndex(ctx, repo, data, expect)
}

// addTagBehindBack is a change made by "another process": it tags dC.
func addTagBehindBack(tag string) func(context.Context, storage.Driver, string) error {
	return func(ctx context.Context, d storage.Driver, repo string) error {
		data, ver, err := d.Index(ctx, repo)
		if errors.Is(err, storage.ErrRepoUnknown) {
			data, ver = mustJSON(newIndex()), ""
		} else if err != nil {
			return err
		}
		x := newIndex()
		if err := json.Unmarshal(data, x); err != nil {
			return err
		}
		x.putManifest(descOf(dC), []string{tag})
		return d.PutIndex(ctx, repo, mustJSON(x), ver)
	}
}

func TestUpdateIndexRetriesOnConflict(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cd := &conflictDriver{Driver: e.store, n: 1, change: addTagBehindBack("theirs")}
	r := New(cd, e.md, e.reg.log)
	ver, err := r.updateIndex(t.Context(), "repo", func(x *ociIndex) error { x.putManifest(descOf(dA), []string{"ours"}); return nil })
	if err != nil {
		t.Fatalf("updateIndex: %v", err)
	}
	if cd.calls != 2 {
		t.Errorf("PutIndex called %d times, want 2 (one conflict, one retry)", cd.calls)
	}
	x, storedVer := storedIndex(t, e.store, "repo")
	if ver != storedVer {
		t.Errorf("updateIndex returned version %s, storage has %s", ver, storedVer)
	}
	want := sortEntries([]entry{{dA, "ours"}, {dC, "theirs"}})
	if got := sortEntries(entries(x)); !slices.Equal(got, want) {
		t.Errorf("index %v, want %v: the retry must re-read and keep the other writer's change", got, want)
	}
}

func TestUpdateIndexGivesUp(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cd := &conflictDriver{Driver: e.store, n: 1 << 30}
	r := New(cd, e.md, e.reg.log)
	_, err := r.updateIndex(t.Context(), "repo", func(x *ociIndex) error { x.putManifest(descOf(dA), nil); return nil })
	if !errors.Is(err, storage.ErrIndexConflict) {
		t.Fatalf("updateIndex: %v, want ErrIndexConflict", err)
	}
	if cd.calls != maxIndexRetries {
		t.Errorf("PutIndex called %d times, want %d", cd.calls, maxIndexRetries)
	}
}

// TestPutManifestConflict runs a whole push through a conflict: metadata
// must end at the version storage holds, with both writers' tags.
func TestPutManifestConflict(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	body := e.image(t, "repo", "1", nil)
	cd := &conflictDriver{Driver: e.store, n: 2, change: addTagBehindBack("theirs")}
	r := New(cd, e.md, e.reg.log)
	res, err := r.PutManifest(t.Context(), "repo", "ours", v1.MediaTypeImageManifest, body, nil)
	if err != nil {
		t.Fatalf("PutManifest: %v", err)
	}
	_, ver := storedIndex(t, e.store, "repo")
	if mv, err := e.md.Version(t.Context(), "repo"); err != nil || mv != ver {
		t.Errorf("metadata version %q (%v), storage %q", mv, err, ver)
	}
	if m, err := r.Resolve(t.Context(), "repo", "ours"); err != nil || m.Digest != res.Digest.String() {
		t.Errorf("Resolve(ours) = %+v, %v", m, err)
	}
	x, _ := storedIndex(t, e.store, "repo")
	if !slices.Contains(entries(x), entry{dC, "theirs"}) || !slices.Contains(entries(x), entry{res.Digest, "ours"}) {
		t.Errorf("index %v lacks a writer's tag", entries(x))
	}
}

// TestConcurrentPuts pushes tags in parallel; every tag must survive in
// both index.json and metadata, at the same version.
func TestConcurrentPuts(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	body := e.image(t, "repo", "1", nil)
	var wg sync.WaitGroup
	const n = 16
	for i := range n {
		wg.Go(func() {
			if _, err := e.reg.PutManifest(context.Background(), "repo", fmt.Sprintf("t%02d", i), "", body, nil); err != nil {
				t.Errorf("PutManifest t%02d: %v", i, err)
			}
		})
	}
	wg.Wait()
	x, ver := storedIndex(t, e.store, "repo")
	if len(x.Manifests) != n {
		t.Errorf("index has %d entries, want %d", len(x.Manifests), n)
	}
	tags, err := e.reg.Tags(t.Context(), "repo", "", -1)
	if err != nil || len(tags) != n {
		t.Errorf("Tags = %v, %v; want %d", tags, err, n)
	}
	if mv, _ := e.md.Version(t.Context(), "repo"); mv != ver {
		t.Errorf("metadata version %s, storage %s", mv, ver)
	}
}
