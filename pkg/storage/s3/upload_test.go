package s3

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/opencontainers/go-digest"

	"github.com/berthreg/berth/pkg/storage"
)

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func appendBytes(t testing.TB, u storage.Upload, p []byte) {
	t.Helper()
	before := u.Size()
	n, err := u.Append(context.Background(), bytes.NewReader(p))
	if err != nil || n != int64(len(p)) || u.Size() != before+n {
		t.Fatalf("Append(%d bytes) = %d, %v; Size %d, want %d", len(p), n, err, u.Size(), before+int64(len(p)))
	}
}

func readAll(t testing.TB, d *Driver, repo string, dgst digest.Digest) []byte {
	t.Helper()
	r, err := d.Open(context.Background(), repo, dgst)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return b
}

// noSession checks that nothing of upload sessions is left in d.
func noSession(t testing.TB, d *Driver) {
	t.Helper()
	if keys := listKeys(t, d, d.key(uploadsDir)); len(keys) > 0 {
		t.Fatalf("session objects left: %q", keys)
	}
	if n := multipartUploads(t, d, d.key(uploadsDir)); n > 0 {
		t.Fatalf("%d multipart uploads left", n)
	}
}

// PATCH-like appends far below and above the 5 MiB part minimum: the
// tail is carried over into parts and flushed as the last part.
func TestAppendChunkSizes(t *testing.T) {
	d := newTestDriver(t, testConfig(newBucket()))
	ctx := context.Background()
	chunks := [][]byte{randomBytes(1, 1), randomBytes(2, 100<<10), randomBytes(3, 7<<20), randomBytes(4, 3)}
	whole := bytes.Join(chunks, nil)
	for _, alg := range []digest.Algorithm{digest.SHA256, digest.SHA512} {
		u, err := d.NewUpload(ctx, "chunks")
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range chunks {
			appendBytes(t, u, c)
		}
		st := u.(*upload).st
		if len(st.Parts) != 1 || st.UploadID == "" || st.tailSize() != int64(len(whole))-MinPartSize {
			t.Fatalf("state: %d parts, upload id %q, tail %d", len(st.Parts), st.UploadID, st.tailSize())
		}
		dgst := alg.FromBytes(whole)
		info, err := u.Commit(ctx, dgst)
		if err != nil || info.Size != int64(len(whole)) {
			t.Fatalf("Commit %s = %+v, %v", alg, info, err)
		}
		if got := readAll(t, d, "chunks", dgst); !bytes.Equal(got, whole) {
			t.Fatalf("%s: read back %d bytes, differing", alg, len(got))
		}
	}
	noSession(t, d)
}

// An upload started by one Driver is continued and committed by another,
// as by another member of the cluster or after a restart.
func TestUploadAcrossDrivers(t *testing.T) {
	bucket := newBucket()
	d1 := newTestDriver(t, testConfig(bucket))
	cfg := testConfig(bucket)
	cfg.PartSize = 0 // another part size: the session keeps its own
	d2 := newTestDriver(t, cfg)
	ctx := context.Background()
	a, b, c := randomBytes(1, 6<<20), randomBytes(2, 10), randomBytes(3, 4<<20)

	u, err := d1.NewUpload(ctx, "x/y")
	if err != nil {
		t.Fatal(err)
	}
	appendBytes(t, u, a)
	appendBytes(t, u, b)
	id := u.ID()
	u.Close()

	u, err = d2.Upload(ctx, "x/y", id)
	if err != nil {
		t.Fatalf("Upload on the second driver: %v", err)
	}
	if u.Size() != int64(len(a)+len(b)) {
		t.Fatalf("Size = %d", u.Size())
	}
	appendBytes(t, u, c)
	if st := u.(*upload).st; len(st.Parts) != 2 || st.PartSize != MinPartSize {
		t.Fatalf("%d parts of %d bytes, want 2 of 5 MiB", len(st.Parts), st.PartSize)
	}
	u.Close()

	u, err = d1.Upload(ctx, "x/y", id)
	if err != nil {
		t.Fatal(err)
	}
	whole := slices.Concat(a, b, c)
	dgst := digest.FromBytes(whole)
	if _, err := u.Commit(ctx, dgst); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if got := readAll(t, d2, "x/y", dgst); !bytes.Equal(got, whole) {
		t.Fatal("blob differs")
	}
	noSession(t, d1)
}

// Two Drivers holding one session: the first to persist wins, the other
// gets ErrUploadBusy and cannot spoil the session.
func TestConcurrentWriters(t *testing.T) {
	bucket := newBucket()
	d1 := newTestDriver(t, testConfig(bucket))
	d2 := newTestDriver(t, testConfig(bucket))
	ctx := context.Background()
	u, err := d1.NewUpload(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	appendBytes(t, u, []byte("one "))
	u2, err := d2.Upload(ctx, "r", u.ID())
	if err != nil {
		t.Fatal(err)
	}
	defer u2.Close()
	appendBytes(t, u, []byte("two "))
	if _, err := u2.Append(ctx, strings.NewReader("spoiler")); !errors.Is(err, storage.ErrUploadBusy) {
		t.Fatalf("Append of the stale writer: %v, want ErrUploadBusy", err)
	}
	if _, err := u2.Commit(ctx, digest.FromString("one spoiler")); !errors.Is(err, storage.ErrUploadBusy) {
		t.Fatalf("Commit of the stale writer: %v, want ErrUploadBusy", err)
	}
	appendBytes(t, u, []byte("three"))
	dgst := digest.FromString("one two three")
	if _, err := u.Commit(ctx, dgst); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if got := readAll(t, d2, "r", dgst); string(got) != "one two three" {
		t.Fatalf("blob = %q", got)
	}
	noSession(t, d1)
}

// A digest mismatch leaves no blob key, no multipart upload, no session.
func TestCommitMismatchMultipart(t *testing.T) {
	d := newTestDriver(t, testConfig(newBucket()))
	ctx := context.Background()
	content := randomBytes(5, 6<<20)
	for _, alg := range []digest.Algorithm{digest.SHA256, digest.SHA512} {
		u, err := d.NewUpload(ctx, "r")
		if err != nil {
			t.Fatal(err)
		}
		appendBytes(t, u, content)
		claimed := alg.FromString("something else")
		if _, err := u.Commit(ctx, claimed); !errors.Is(err, storage.ErrDigestMismatch) {
			t.Fatalf("Commit %s: %v, want ErrDigestMismatch", alg, err)
		}
		if keys := listKeys(t, d, d.key("r", blobsDir)); len(keys) > 0 {
			t.Fatalf("%s: blob keys after mismatch: %q", alg, keys)
		}
		if _, err := d.Upload(ctx, "r", u.ID()); !errors.Is(err, storage.ErrUploadUnknown) {
			t.Fatalf("Upload after mismatch: %v", err)
		}
		noSession(t, d)
	}
}

func TestCancelAbortsMultipart(t *testing.T) {
	d := newTestDriver(t, testConfig(newBucket()))
	ctx := context.Background()
	u, err := d.NewUpload(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	appendBytes(t, u, randomBytes(6, 6<<20))
	if n := multipartUploads(t, d, ""); n != 1 {
		t.Fatalf("%d multipart uploads before Cancel, want 1", n)
	}
	if err := u.Cancel(ctx); err != nil {
		t.Fatalf("Cancel: %v", err)
	}
	noSession(t, d)
	if err := u.Cancel(ctx); !errors.Is(err, storage.ErrUploadUnknown) {
		t.Fatalf("second Cancel: %v", err)
	}
}

// Many small appends: tail objects are coalesced beyond maxTailSegments.
func TestManySmallAppends(t *testing.T) {
	d := newTestDriver(t, testConfig(newBucket()))
	ctx := context.Background()
	u, err := d.NewUpload(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	var whole []byte
	for i := range maxTailSegments*2 + 5 {
		c := randomBytes(uint64(i), 1+i*100)
		appendBytes(t, u, c)
		whole = append(whole, c...)
		if n := len(u.(*upload).st.Tail); n > maxTailSegments {
			t.Fatalf("%d tail segments", n)
		}
	}
	if keys := listKeys(t, d, d.sessionKey(u.ID(), tailPrefix)); len(keys) != len(u.(*upload).st.Tail) {
		t.Fatalf("%d tail objects for %d segments", len(keys), len(u.(*upload).st.Tail))
	}
	dgst := digest.FromBytes(whole)
	if _, err := u.Commit(ctx, dgst); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, d, "r", dgst); !bytes.Equal(got, whole) {
		t.Fatal("blob differs")
	}
	noSession(t, d)
}

func TestUploadsAndAbortStale(t *testing.T) {
	d := newTestDriver(t, testConfig(newBucket()))
	ctx := context.Background()
	big, err := d.NewUpload(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	appendBytes(t, big, randomBytes(7, 6<<20)) // has a multipart upload
	big.Close()
	small, err := d.NewUpload(ctx, "b/c")
	if err != nil {
		t.Fatal(err)
	}
	appendBytes(t, small, []byte("small"))
	small.Close()
	held, err := d.NewUpload(ctx, "held")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	// A multipart upload whose session never got written (crash).
	orphan := d.sessionKey(randHex(idLen/2), dataFile)
	if _, err := d.c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &d.bucket, Key: aws.String(orphan)}); err != nil {
		t.Fatal(err)
	}

	got := map[string]string{}
	err = d.Uploads(ctx, func(repo, id string, startedAt time.Time) error {
		if time.Since(startedAt) > time.Minute {
			t.Errorf("startedAt %v", startedAt)
		}
		got[id] = repo
		return nil
	})
	want := map[string]string{big.ID(): "a", small.ID(): "b/c", held.ID(): "held"}
	if err != nil || !equalMaps(got, want) {
		t.Fatalf("Uploads = %v, %v; want %v", got, err, want)
	}

	if n, err := d.AbortStale(ctx, time.Hour, nil); err != nil || n != 0 {
		t.Fatalf("AbortStale(1h) = %d, %v; want 0", n, err)
	}
	// A negative age puts the cutoff in the future: everything is stale.
	n, err := d.AbortStale(ctx, -time.Minute, nil)
	if err != nil || n != 3 {
		t.Fatalf("AbortStale = %d, %v; want 3 (2 sessions, 1 orphan)", n, err)
	}
	for _, u := range []storage.Upload{big, small} {
		if _, err := d.Upload(ctx, "a", u.ID()); !errors.Is(err, storage.ErrUploadUnknown) {
			t.Fatalf("Upload after AbortStale: %v", err)
		}
	}
	if n := multipartUploads(t, d, ""); n != 0 {
		t.Fatalf("%d multipart uploads left", n)
	}
	appendBytes(t, held, []byte("still here")) // held sessions are spared
	if keys := listKeys(t, d, d.key(uploadsDir)); len(keys) != 2 {
		t.Fatalf("session objects = %q, want the held session's state and tail", keys)
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
