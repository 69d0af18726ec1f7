package storagetest

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/berthreg/berth/pkg/storage"
)

func testUploadChunks(t *testing.T, d storage.Driver) {
	ctx := context.Background()
	chunks := []string{"first chunk, ", strings.Repeat("middle ", 10000), "last"}
	whole := []byte(strings.Join(chunks, ""))
	for _, alg := range algorithms {
		before := time.Now().Add(-time.Minute)
		u := mustNewUpload(t, d, "r/chunks")
		if u.ID() == "" || u.Size() != 0 || u.StartedAt().Before(before) || u.StartedAt().After(time.Now().Add(time.Minute)) {
			t.Fatalf("new upload: ID %q, Size %d, StartedAt %v", u.ID(), u.Size(), u.StartedAt())
		}
		for _, c := range chunks {
			mustAppend(t, u, []byte(c))
		}
		dgst := alg.FromBytes(whole)
		info, err := u.Commit(ctx, dgst)
		if err != nil || info.Size != int64(len(whole)) {
			t.Fatalf("Commit %s = %+v, %v; want size %d", alg, info, err, len(whole))
		}
		readBlob(t, d, "r/chunks", dgst, whole)
		_, err = d.Upload(ctx, "r/chunks", u.ID())
		wantErr(t, "Upload after Commit", err, storage.ErrUploadUnknown)
	}
}

func testUploadEmpty(t *testing.T, d storage.Driver) {
	ctx := context.Background()
	for _, alg := range algorithms {
		u := mustNewUpload(t, d, "repo")
		if alg == digest.SHA512 {
			mustAppend(t, u, nil)
		}
		dgst := alg.FromBytes(nil)
		info, err := u.Commit(ctx, dgst)
		if err != nil || info.Size != 0 {
			t.Fatalf("Commit empty %s = %+v, %v", alg, info, err)
		}
		readBlob(t, d, "repo", dgst, []byte{})
	}
}

func testUploadLarge(t *testing.T, d storage.Driver) {
	if testing.Short() {
		t.Skip("64 MiB upload")
	}
	const size = 64 << 20
	ctx := context.Background()
	h := sha256.New()
	if _, err := io.Copy(h, newPatternReader(1, size)); err != nil {
		t.Fatal(err)
	}
	dgst := digest.NewDigest(digest.SHA256, h)

	u := mustNewUpload(t, d, "big")
	src := newPatternReader(1, size)
	for _, part := range []int64{size / 4, size - size/4} {
		n, err := u.Append(ctx, io.LimitReader(src, part))
		if err != nil || n != part {
			t.Fatalf("Append = %d, %v; want %d", n, err, part)
		}
	}
	if u.Size() != size {
		t.Fatalf("Size = %d, want %d", u.Size(), size)
	}
	if info, err := u.Commit(ctx, dgst); err != nil || info.Size != size {
		t.Fatalf("Commit = %+v, %v", info, err)
	}

	r, err := d.Open(ctx, "big", dgst)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	h.Reset()
	if n, err := io.Copy(h, r); err != nil || n != size {
		t.Fatalf("read back %d bytes, %v", n, err)
	}
	if got := digest.NewDigest(digest.SHA256, h); got != dgst {
		t.Fatalf("read back %s, want %s", got, dgst)
	}
}

func testCommitMismatch(t *testing.T, d storage.Driver) {
	ctx := context.Background()
	for _, alg := range algorithms {
		u := mustNewUpload(t, d, "repo")
		mustAppend(t, u, []byte("actual content"))
		claimed := alg.FromString("claimed content")
		_, err := u.Commit(ctx, claimed)
		wantErr(t, "Commit "+alg.String(), err, storage.ErrDigestMismatch)
		for _, dgst := range []digest.Digest{claimed, alg.FromString("actual content")} {
			_, err := d.Stat(ctx, "repo", dgst)
			wantErr(t, "Stat after mismatch", err, storage.ErrBlobUnknown)
		}
		_, err = d.Upload(ctx, "repo", u.ID())
		wantErr(t, "Upload after mismatch", err, storage.ErrUploadUnknown)
	}
}

func testResume(t *testing.T, d storage.Driver) {
	ctx := context.Background()
	for _, alg := range algorithms {
		u := mustNewUpload(t, d, "repo")
		id := u.ID()
		mustAppend(t, u, []byte("hello "))
		if err := u.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := u.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}

		u = mustResume(t, d, "repo", id)
		if u.ID() != id || u.Size() != 6 {
			t.Fatalf("resumed upload: ID %q, Size %d; want %q, 6", u.ID(), u.Size(), id)
		}
		mustAppend(t, u, []byte("world"))
		u.Close()

		u = mustResume(t, d, "repo", id)
		if u.Size() != 11 {
			t.Fatalf("Size = %d, want 11", u.Size())
		}
		dgst := alg.FromString("hello world")
		if _, err := u.Commit(ctx, dgst); err != nil {
			t.Fatalf("Commit %s: %v", alg, err)
		}
		readBlob(t, d, "repo", dgst, []byte("hello world"))
	}
}

func testBusy(t *testing.T, d storage.Driver) {
	ctx := context.Background()
	u := mustNewUpload(t, d, "repo")
	id := u.ID()
	_, err := d.Upload(ctx, "repo", id)
	wantErr(t, "Upload while NewUpload's is open", err, storage.ErrUploadBusy)
	u.Close()

	u = mustResume(t, d, "repo", id)
	_, err = d.Upload(ctx, "repo", id)
	wantErr(t, "Upload while another is open", err, storage.ErrUploadBusy)
	u.Close()

	// Of many concurrent requests, one gets the session.
	const n = 8
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		winner storage.Upload
		busy   int
	)
	for range n {
		wg.Go(func() {
			u, err := d.Upload(ctx, "repo", id)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil && winner == nil:
				winner = u
			case err == nil:
				t.Errorf("two concurrent Uploads of %s succeeded", id)
				u.Close()
			case errors.Is(err, storage.ErrUploadBusy):
				busy++
			default:
				t.Errorf("concurrent Upload: %v", err)
			}
		})
	}
	wg.Wait()
	if winner == nil || busy != n-1 {
		t.Fatalf("concurrent Uploads: winner %v, %d busy; want one winner, %d busy", winner != nil, busy, n-1)
	}
	mustAppend(t, winner, []byte("x"))
	if _, err := winner.Commit(ctx, digest.FromString("x")); err != nil {
		t.Fatalf("Commit: %v", err)
	}
}

func testCancel(t *testing.T, d storage.Driver) {
	ctx := context.Background()
	u := mustNewUpload(t, d, "repo")
	mustAppend(t, u, []byte("cancelled"))
	if err := u.Cancel(ctx); err != nil {
		t.Fatalf("Cancel: %v", err)
	}
	_, err := d.Upload(ctx, "repo", u.ID())
	wantErr(t, "Upload after Cancel", err, storage.ErrUploadUnknown)
	_, err = d.Stat(ctx, "repo", digest.FromString("cancelled"))
	wantErr(t, "Stat after Cancel", err, storage.ErrBlobUnknown)

	// Cancel of a resumed session.
	u = mustNewUpload(t, d, "repo")
	u.Close()
	u = mustResume(t, d, "repo", u.ID())
	if err := u.Cancel(ctx); err != nil {
		t.Fatalf("Cancel resumed: %v", err)
	}
	_, err = d.Upload(ctx, "repo", u.ID())
	wantErr(t, "Upload after Cancel", err, storage.ErrUploadUnknown)
}

func testUploadOtherRepo(t *testing.T, d storage.Driver) {
	ctx := context.Background()
	u := mustNewUpload(t, d, "a")
	mustAppend(t, u, []byte("data"))
	u.Close()
	for _, repo := range []string{"b", "a/b"} {
		_, err := d.Upload(ctx, repo, u.ID())
		wantErr(t, "Upload as "+repo, err, storage.ErrUploadUnknown)
	}
	u = mustResume(t, d, "a", u.ID())
	if u.Size() != 4 {
		t.Fatalf("Size = %d, want 4", u.Size())
	}
}

func testUploadUnknownID(t *testing.T, d storage.Driver) {
	ctx := context.Background()
	u := mustNewUpload(t, d, "repo")
	defer u.Close()
	for _, id := range []string{
		"", "0123456789abcdef0123456789abcdef", "../repo", "..", ".", "a/b",
		u.ID() + "/..", "../_uploads/" + u.ID(), strings.ToUpper(u.ID()),
	} {
		_, err := d.Upload(ctx, "repo", id)
		wantErr(t, "Upload of id "+id, err, storage.ErrUploadUnknown)
	}
}

func testAppendReaderError(t *testing.T, d storage.Driver) {
	ctx := context.Background()
	boom := errors.New("client went away")
	u := mustNewUpload(t, d, "repo")
	mustAppend(t, u, []byte("abc"))
	n, err := u.Append(ctx, &errReader{data: []byte("def"), err: boom})
	if n != 3 || !errors.Is(err, boom) {
		t.Fatalf("Append of failing reader = %d, %v; want 3, %v", n, err, boom)
	}
	if u.Size() != 6 {
		t.Fatalf("Size = %d, want 6", u.Size())
	}
	// Still usable in the same request...
	mustAppend(t, u, []byte("ghi"))
	// ...and after resuming.
	u.Close()
	u = mustResume(t, d, "repo", u.ID())
	if u.Size() != 9 {
		t.Fatalf("resumed Size = %d, want 9", u.Size())
	}
	n, err = u.Append(ctx, &errReader{err: boom})
	if n != 0 || !errors.Is(err, boom) {
		t.Fatalf("Append of reader failing at once = %d, %v", n, err)
	}
	mustAppend(t, u, []byte("jkl"))
	dgst := digest.FromString("abcdefghijkl")
	if _, err := u.Commit(ctx, dgst); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	readBlob(t, d, "repo", dgst, []byte("abcdefghijkl"))
}
