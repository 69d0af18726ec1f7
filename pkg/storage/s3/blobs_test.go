package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/berthreg/berth/pkg/storage"
)

func TestLayoutKeys(t *testing.T) {
	cfg := testConfig(newBucket())
	cfg.Prefix = "root/dir"
	d := newTestDriver(t, cfg)
	ctx := context.Background()
	if err := d.PutIndex(ctx, "a/b", []byte(`{}`), ""); err != nil {
		t.Fatal(err)
	}
	dgst := digest.FromString("blob")
	if err := d.Put(ctx, "a/b", dgst, []byte("blob")); err != nil {
		t.Fatal(err)
	}
	got := listKeys(t, d, "")
	want := []string{"root/dir/a/b/blobs/sha256/" + dgst.Encoded(), "root/dir/a/b/index.json", "root/dir/a/b/oci-layout"}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("keys = %q, want %q", got, want)
	}
	if err := d.Put(ctx, "_uploads", dgst, []byte("blob")); !errors.Is(err, storage.ErrNameInvalid) {
		t.Fatalf("Put in _uploads: %v", err)
	}
}

// Seek only moves the offset; the next Read fetches from there.
func TestRangedRead(t *testing.T) {
	d := newTestDriver(t, testConfig(newBucket()))
	ctx := context.Background()
	content := randomBytes(8, 1<<20+123)
	dgst := digest.FromBytes(content)
	if err := d.Put(ctx, "r", dgst, content); err != nil {
		t.Fatal(err)
	}
	r, err := d.Open(ctx, "r", dgst)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Info().Size != int64(len(content)) || time.Since(r.Info().ModTime) > time.Minute {
		t.Fatalf("Info = %+v", r.Info())
	}
	read := func(off int64, whence, n int, want []byte) {
		t.Helper()
		if _, err := r.Seek(off, whence); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, n)
		m, err := io.ReadFull(r, got)
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("read: %v", err)
		}
		if !bytes.Equal(got[:m], want) {
			t.Fatalf("Seek(%d, %d) read %d bytes, differing from %d wanted", off, whence, m, len(want))
		}
	}
	read(500000, io.SeekStart, 10, content[500000:500010])
	read(5, io.SeekCurrent, 10, content[500015:500025])
	read(-5, io.SeekEnd, 10, content[len(content)-5:])
	read(0, io.SeekStart, 3, content[:3])
	if n, err := r.Read(make([]byte, 1)); n != 1 || err != nil {
		t.Fatalf("Read = %d, %v", n, err)
	}
	if _, err := r.Seek(int64(len(content))+10, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if n, err := r.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("Read past the end = %d, %v", n, err)
	}
	if _, err := r.Seek(-1, io.SeekStart); err == nil {
		t.Fatal("Seek to -1 succeeded")
	}

	// http.ServeContent answers a Range from the middle.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r, err := d.Open(req.Context(), "r", dgst)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		defer r.Close()
		http.ServeContent(w, req, "", r.Info().ModTime, r)
	}))
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL, nil)
	req.Header.Set("Range", "bytes=1000000-1000099")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, content[1000000:1000100]) {
		t.Fatalf("ranged GET: %s, %d bytes", resp.Status, len(body))
	}
}

// Mount and commit copy server side: CopyObject, or UploadPartCopy above
// maxCopy (lowered here from 5 GiB).
func TestServerSideCopy(t *testing.T) {
	d := newTestDriver(t, testConfig(newBucket()))
	ctx := context.Background()
	content := randomBytes(9, 12<<20)
	dgst := digest.FromBytes(content)
	for _, multipart := range []bool{false, true} {
		src := fmt.Sprintf("src%v", multipart)
		if multipart {
			d.maxCopy, d.copyPart = 6<<20, MinPartSize
		}
		u, err := d.NewUpload(ctx, src)
		if err != nil {
			t.Fatal(err)
		}
		appendBytes(t, u, content)
		if _, err := u.Commit(ctx, dgst); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		dst := src + "/mounted"
		if err := d.Mount(ctx, src, dst, dgst); err != nil {
			t.Fatalf("Mount: %v", err)
		}
		for _, repo := range []string{src, dst} {
			if got := readAll(t, d, repo, dgst); !bytes.Equal(got, content) {
				t.Fatalf("multipart %v: %s differs", multipart, repo)
			}
		}
		if err := d.Mount(ctx, "nothing", dst, dgst); !errors.Is(err, storage.ErrBlobUnknown) {
			t.Fatalf("Mount from a repo without it: %v", err)
		}
	}
	noSession(t, d)
}

// Two Drivers (two members) updating one index with the same expected
// version: exactly one wins each round.
func TestPutIndexAcrossDrivers(t *testing.T) {
	bucket := newBucket()
	ds := []*Driver{newTestDriver(t, testConfig(bucket)), newTestDriver(t, testConfig(bucket))}
	ctx := context.Background()
	expect := ""
	for round := range 10 {
		var wg sync.WaitGroup
		errs := make([]error, 2*len(ds))
		for i := range errs {
			wg.Go(func() {
				errs[i] = ds[i%len(ds)].PutIndex(ctx, "repo", fmt.Appendf(nil, `{"round":%d,"writer":%d}`, round, i), expect)
			})
		}
		wg.Wait()
		won := 0
		for _, err := range errs {
			switch {
			case err == nil:
				won++
			case !errors.Is(err, storage.ErrIndexConflict):
				t.Fatalf("round %d: %v", round, err)
			}
		}
		if won != 1 {
			t.Fatalf("round %d: %d writers won, want 1", round, won)
		}
		data, v, err := ds[round%2].Index(ctx, "repo")
		if err != nil || !bytes.Contains(data, fmt.Appendf(nil, `"round":%d`, round)) {
			t.Fatalf("Index = %s, %v", data, err)
		}
		expect = v
	}
}

func TestRedirectURL(t *testing.T) {
	cfg := testConfig(newBucket())
	d := newTestDriver(t, cfg)
	ctx := context.Background()
	dgst := digest.FromString("redirected")
	if err := d.Put(ctx, "r", dgst, []byte("redirected")); err != nil {
		t.Fatal(err)
	}
	if _, err := d.RedirectURL(ctx, "r", dgst, time.Minute); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("RedirectURL with redirects off: %v", err)
	}
	cfg.Redirect = true
	d = newTestDriver(t, cfg)
	u, err := d.RedirectURL(ctx, "r", dgst, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "redirected" {
		t.Fatalf("GET presigned URL: %s %q", resp.Status, body)
	}
}
