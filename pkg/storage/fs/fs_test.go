package fs_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/storage"
	"github.com/berthreg/berth/pkg/storage/fs"
	"github.com/berthreg/berth/pkg/storage/storagetest"
)

func newDriver(t testing.TB, root string) *fs.Driver {
	t.Helper()
	d, err := fs.New(root, zerolog.Nop())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return d
}

func TestDriver(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Driver { return newDriver(t, t.TempDir()) })
}

func TestNewCreatesRoot(t *testing.T) {
	root := filepath.Join(t.TempDir(), "x", "y")
	newDriver(t, root)
	if fi, err := os.Stat(root); err != nil || !fi.IsDir() {
		t.Fatalf("root: %v", err)
	}
}

func TestLayout(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	d := newDriver(t, root)
	index := []byte(`{"schemaVersion":2,"manifests":[]}`)
	if err := d.PutIndex(ctx, "a/b", index, ""); err != nil {
		t.Fatal(err)
	}
	content := []byte("blob")
	dgst := digest.FromBytes(content)
	if err := d.Put(ctx, "a/b", dgst, content); err != nil {
		t.Fatal(err)
	}

	dir := filepath.Join(root, "a", "b")
	var layout struct {
		Version string `json:"imageLayoutVersion"`
	}
	readJSON(t, filepath.Join(dir, "oci-layout"), &layout)
	if layout.Version != "1.0.0" {
		t.Fatalf("imageLayoutVersion = %q", layout.Version)
	}
	var v any
	readJSON(t, filepath.Join(dir, "index.json"), &v)
	if got, _ := os.ReadFile(filepath.Join(dir, "blobs", "sha256", dgst.Encoded())); !bytes.Equal(got, content) {
		t.Fatalf("blob file holds %q", got)
	}

	for _, name := range []string{"oci-layout", "index.json", "blobs/sha256/" + dgst.Encoded()} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.Mode().Perm() != 0o644 {
			t.Fatalf("%s: mode %v, %v; want 0644", name, fi.Mode(), err)
		}
	}

	// Mount creates the layout but no index.json; so do uploads.
	if err := d.Mount(ctx, "a/b", "m", dgst); err != nil {
		t.Fatal(err)
	}
	u, err := d.NewUpload(ctx, "u")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := u.Commit(ctx, digest.SHA512.FromBytes(nil)); err != nil {
		t.Fatal(err)
	}
	for _, repo := range []string{"m", "u"} {
		readJSON(t, filepath.Join(root, repo, "oci-layout"), &layout)
		if _, err := os.Stat(filepath.Join(root, repo, "index.json")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s/index.json: %v, want none", repo, err)
		}
	}
	if fi, err := os.Stat(filepath.Join(root, "u", "blobs", "sha512")); err != nil || !fi.IsDir() {
		t.Fatalf("u/blobs/sha512: %v", err)
	}
}

func readJSON(t *testing.T, name string, v any) {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// TestRestart resumes sessions with a new Driver on the same root, as after
// a crash (the first Driver's uploads were never closed), including when the
// saved hash state is missing, broken or behind the data.
func TestRestart(t *testing.T) {
	tests := []struct {
		name   string
		damage func(t *testing.T, session string) (extra []byte)
	}{
		{"clean", func(*testing.T, string) []byte { return nil }},
		{"no hash state", func(t *testing.T, s string) []byte {
			mustRemove(t, filepath.Join(s, "hashstate"))
			return nil
		}},
		{"broken hash state", func(t *testing.T, s string) []byte {
			mustWrite(t, filepath.Join(s, "hashstate"), []byte(`{"offset":3,"state":"AAAA"}`))
			return nil
		}},
		{"data past hash state", func(t *testing.T, s string) []byte {
			extra := []byte("written before the crash, state not saved")
			f, err := os.OpenFile(filepath.Join(s, "data"), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.Write(extra); err != nil {
				t.Fatal(err)
			}
			return extra
		}},
		{"data behind hash state", func(t *testing.T, s string) []byte {
			if err := os.Truncate(filepath.Join(s, "data"), 4); err != nil {
				t.Fatal(err)
			}
			return nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			root := t.TempDir()
			first := []byte(strings.Repeat("0123456789", 100))

			u, err := newDriver(t, root).NewUpload(ctx, "r")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := u.Append(ctx, bytes.NewReader(first)); err != nil {
				t.Fatal(err)
			}
			extra := tt.damage(t, filepath.Join(root, "_uploads", u.ID()))
			if tt.name == "data behind hash state" {
				first = first[:4]
			}

			d := newDriver(t, root)
			u2, err := d.Upload(ctx, "r", u.ID())
			if err != nil {
				t.Fatalf("Upload after restart: %v", err)
			}
			defer u2.Close()
			want := append(append(first, extra...), "more"...)
			if u2.Size() != int64(len(want)-4) {
				t.Fatalf("Size = %d, want %d", u2.Size(), len(want)-4)
			}
			if _, err := u2.Append(ctx, strings.NewReader("more")); err != nil {
				t.Fatal(err)
			}
			if _, err := u2.Commit(ctx, digest.FromBytes(want)); err != nil {
				t.Fatalf("Commit: %v", err)
			}
		})
	}
}

func mustRemove(t *testing.T, name string) {
	t.Helper()
	if err := os.Remove(name); err != nil {
		t.Fatal(err)
	}
}

func mustWrite(t *testing.T, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(name, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestNoTempFiles checks that after a mix of writes blobs/ holds only
// content-addressed names and nothing is left in the driver's dirs.
func TestNoTempFiles(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	d := newDriver(t, root)
	for i := range 5 {
		content := bytes.Repeat([]byte{byte(i)}, 1000*i)
		if err := d.Put(ctx, "r", digest.FromBytes(content), content); err != nil {
			t.Fatal(err)
		}
		u, err := d.NewUpload(ctx, "r")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := u.Append(ctx, bytes.NewReader(content)); err != nil {
			t.Fatal(err)
		}
		content = append(content, 'x')
		if _, err := u.Commit(ctx, digest.SHA512.FromBytes(content[:len(content)-1])); err != nil {
			t.Fatal(err)
		}
		if err := d.PutIndex(ctx, "r", content, versionOf(t, d, "r")); err != nil {
			t.Fatal(err)
		}
	}
	u, _ := d.NewUpload(ctx, "r")
	u.Append(ctx, strings.NewReader("mismatch"))
	if _, err := u.Commit(ctx, digest.FromString("other")); !errors.Is(err, storage.ErrDigestMismatch) {
		t.Fatal(err)
	}

	blobName := regexp.MustCompile(`^(sha256/[a-f0-9]{64}|sha512/[a-f0-9]{128})$`)
	blobs := filepath.Join(root, "r", "blobs")
	filepath.WalkDir(blobs, func(p string, e os.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(blobs, p)
		if !e.IsDir() && !blobName.MatchString(filepath.ToSlash(rel)) {
			t.Errorf("unexpected file in blobs: %s", rel)
		}
		return nil
	})
	for _, dir := range []string{"_tmp", "_uploads"} {
		if entries, _ := os.ReadDir(filepath.Join(root, dir)); len(entries) != 0 {
			t.Errorf("%s holds %v", dir, entries)
		}
	}
}

func versionOf(t *testing.T, d storage.Driver, repo string) string {
	_, v, err := d.Index(context.Background(), repo)
	if errors.Is(err, storage.ErrRepoUnknown) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestInvalidRepo(t *testing.T) {
	ctx := context.Background()
	parent := t.TempDir()
	root := filepath.Join(parent, "root")
	d := newDriver(t, root)
	content := []byte("x")
	dgst := digest.FromBytes(content)
	if err := d.Put(ctx, "ok", dgst, content); err != nil {
		t.Fatal(err)
	}
	for _, repo := range []string{
		"", "/", "/abs", "a/", "a//b", "..", "../x", "a/../../x", "a/./b", ".", "./a",
		"_uploads", "_tmp", "a/_x", ".hidden", "a/.git", "Upper", "a\\..\\b", "a\x00b", "a b",
		"a/blobs", "a/blobs/sha256", "a/oci-layout", "a/index.json",
	} {
		errs := map[string]error{}
		_, errs["Stat"] = d.Stat(ctx, repo, dgst)
		_, errs["Open"] = d.Open(ctx, repo, dgst)
		errs["Put"] = d.Put(ctx, repo, dgst, content)
		errs["Delete"] = d.Delete(ctx, repo, dgst)
		errs["Mount to"] = d.Mount(ctx, "ok", repo, dgst)
		errs["Mount from"] = d.Mount(ctx, repo, "ok2", dgst)
		_, errs["NewUpload"] = d.NewUpload(ctx, repo)
		_, errs["Upload"] = d.Upload(ctx, repo, "0123456789abcdef0123456789abcdef")
		_, _, errs["Index"] = d.Index(ctx, repo)
		errs["PutIndex"] = d.PutIndex(ctx, repo, []byte(`{}`), "")
		for op, err := range errs {
			if err == nil {
				t.Errorf("%s(%q) succeeded", op, repo)
			}
		}
	}
	if entries, _ := os.ReadDir(parent); len(entries) != 1 {
		t.Errorf("files created beside root: %v", entries)
	}
	entries, _ := os.ReadDir(root)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "_tmp _uploads ok" {
		t.Errorf("root holds %q", names)
	}
}

func TestStaleTempCleanup(t *testing.T) {
	root := t.TempDir()
	newDriver(t, root)
	tmp := filepath.Join(root, "_tmp")
	old := time.Now().Add(-2 * time.Hour)
	for _, name := range []string{"tmp-old", "upload-old/data", "tmp-fresh"} {
		p := filepath.Join(tmp, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		mustWrite(t, p, []byte("partial"))
		if strings.Contains(name, "old") {
			os.Chtimes(p, old, old)
			os.Chtimes(filepath.Dir(p), old, old)
		}
	}
	newDriver(t, root)
	entries, _ := os.ReadDir(tmp)
	if len(entries) != 1 || entries[0].Name() != "tmp-fresh" {
		t.Fatalf("_tmp holds %v after New, want only tmp-fresh (young files may be another process's)", entries)
	}
}

func TestUploads(t *testing.T) {
	ctx := context.Background()
	d := newDriver(t, t.TempDir())
	want := map[string]string{}
	for _, repo := range []string{"a", "b/c", "b/c"} {
		u, err := d.NewUpload(ctx, repo)
		if err != nil {
			t.Fatal(err)
		}
		want[u.ID()] = repo
		if repo == "a" {
			u.Close()
		}
	}
	got := map[string]string{}
	err := d.Uploads(ctx, func(repo, id string, startedAt time.Time) error {
		if time.Since(startedAt) > time.Minute {
			t.Errorf("upload %s started at %v", id, startedAt)
		}
		got[id] = repo
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("Uploads = %v, want %v", got, want)
	}
	for id, repo := range want {
		if got[id] != repo {
			t.Fatalf("Uploads = %v, want %v", got, want)
		}
	}
}

// BenchmarkAppend measures the throughput of one 256 MiB Append.
func BenchmarkAppend(b *testing.B) {
	const size = 256 << 20
	ctx := context.Background()
	d := newDriver(b, b.TempDir())
	chunk := bytes.Repeat([]byte("berth"), 1<<20/5+1)[:1<<20]
	b.SetBytes(size)
	for b.Loop() {
		u, err := d.NewUpload(ctx, "bench")
		if err != nil {
			b.Fatal(err)
		}
		if _, err := u.Append(ctx, io.LimitReader(repeatReader(chunk), size)); err != nil {
			b.Fatal(err)
		}
		if err := u.Cancel(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

type repeatReader []byte

func (r repeatReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		n += copy(p[n:], r)
	}
	return n, nil
}
