package storagetest

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/berthreg/berth/pkg/storage"
)

func testMissingBlob(t *testing.T, d storage.Driver) {
	ctx := context.Background()
	for _, alg := range algorithms {
		dgst := alg.FromString("missing")
		_, err := d.Stat(ctx, "repo", dgst)
		wantErr(t, "Stat "+alg.String(), err, storage.ErrBlobUnknown)
		_, err = d.Open(ctx, "repo", dgst)
		wantErr(t, "Open "+alg.String(), err, storage.ErrBlobUnknown)
		err = d.Delete(ctx, "repo", dgst)
		wantErr(t, "Delete "+alg.String(), err, storage.ErrBlobUnknown)
	}
	// Present in another repository only.
	dgst := mustPut(t, d, "other", []byte("elsewhere"))
	_, err := d.Stat(ctx, "repo", dgst)
	wantErr(t, "Stat of a blob in another repo", err, storage.ErrBlobUnknown)
}

func testPutOpen(t *testing.T, d storage.Driver) {
	ctx := context.Background()
	for _, alg := range algorithms {
		content := []byte(`{"schemaVersion":2,"alg":"` + alg.String() + `"}`)
		dgst := alg.FromBytes(content)
		before := time.Now().Add(-time.Minute)
		if err := d.Put(ctx, "a/b", dgst, content); err != nil {
			t.Fatalf("Put %s: %v", alg, err)
		}
		if err := d.Put(ctx, "a/b", dgst, content); err != nil {
			t.Fatalf("Put %s again: %v", alg, err)
		}
		info, err := d.Stat(ctx, "a/b", dgst)
		if err != nil || info.Size != int64(len(content)) || info.ModTime.Before(before) {
			t.Fatalf("Stat %s = %+v, %v; want size %d, recent modtime", alg, info, err, len(content))
		}
		readBlob(t, d, "a/b", dgst, content)

		r, err := d.Open(ctx, "a/b", dgst)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Seek(3, io.SeekStart); err != nil {
			t.Fatalf("Seek: %v", err)
		}
		rest, err := io.ReadAll(r)
		r.Close()
		if err != nil || string(rest) != string(content[3:]) {
			t.Fatalf("read after Seek(3) = %q, %v; want %q", rest, err, content[3:])
		}

		if err := d.Delete(ctx, "a/b", dgst); err != nil {
			t.Fatalf("Delete %s: %v", alg, err)
		}
		_, err = d.Stat(ctx, "a/b", dgst)
		wantErr(t, "Stat after Delete", err, storage.ErrBlobUnknown)
		err = d.Delete(ctx, "a/b", dgst)
		wantErr(t, "second Delete", err, storage.ErrBlobUnknown)
	}
}

func testPutMismatch(t *testing.T, d storage.Driver) {
	ctx := context.Background()
	for _, alg := range algorithms {
		claimed := alg.FromString("claimed")
		err := d.Put(ctx, "repo", claimed, []byte("actual"))
		wantErr(t, "Put with wrong digest", err, storage.ErrDigestMismatch)
		for _, dgst := range []digest.Digest{claimed, alg.FromString("actual")} {
			_, err := d.Stat(ctx, "repo", dgst)
			wantErr(t, "Stat after failed Put", err, storage.ErrBlobUnknown)
		}
	}
}

func testUnsupportedAlgorithm(t *testing.T, d storage.Driver) {
	ctx := context.Background()
	content := []byte("x")
	sha384 := digest.SHA384.FromBytes(content)
	err := d.Put(ctx, "repo", sha384, content)
	wantErr(t, "Put sha384", err, storage.ErrUnsupportedAlgo)
	_, err = d.Stat(ctx, "repo", "md5:9dd4e461268c8034f5c8564e155c67a6")
	wantErr(t, "Stat md5", err, storage.ErrUnsupportedAlgo)

	u := mustNewUpload(t, d, "repo")
	mustAppend(t, u, content)
	_, err = u.Commit(ctx, sha384)
	wantErr(t, "Commit sha384", err, storage.ErrUnsupportedAlgo)
}

func testMount(t *testing.T, d storage.Driver) {
	ctx := context.Background()
	content := []byte("shared layer")
	dgst := mustPut(t, d, "src", content)

	if err := d.Mount(ctx, "src", "dst/x", dgst); err != nil {
		t.Fatalf("Mount: %v", err)
	}
	readBlob(t, d, "dst/x", dgst, content)
	if err := d.Mount(ctx, "src", "dst/x", dgst); err != nil {
		t.Fatalf("Mount again: %v", err)
	}
	_, _, err := d.Index(ctx, "dst/x")
	wantErr(t, "Index of a repo that only has a mounted blob", err, storage.ErrRepoUnknown)

	// The repositories hold the blob independently.
	if err := d.Delete(ctx, "src", dgst); err != nil {
		t.Fatal(err)
	}
	readBlob(t, d, "dst/x", dgst, content)

	err = d.Mount(ctx, "src", "dst/y", dgst)
	wantErr(t, "Mount from a repo without the blob", err, storage.ErrBlobUnknown)
	_, err = d.Stat(ctx, "dst/y", dgst)
	wantErr(t, "Stat after failed Mount", err, storage.ErrBlobUnknown)
}
