// Package storagetest is the conformance suite every storage.Driver runs:
//
//	func TestDriver(t *testing.T) {
//		storagetest.Run(t, func(t *testing.T) storage.Driver { return newDriver(t) })
//	}
package storagetest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/berthreg/berth/pkg/storage"
)

// Run runs the suite. Each subtest calls newDriver for a driver over its own
// empty storage, and subtests run in parallel.
func Run(t *testing.T, newDriver func(t *testing.T) storage.Driver) {
	tests := []struct {
		name string
		fn   func(t *testing.T, d storage.Driver)
	}{
		{"MissingBlob", testMissingBlob},
		{"PutOpen", testPutOpen},
		{"PutMismatch", testPutMismatch},
		{"UnsupportedAlgorithm", testUnsupportedAlgorithm},
		{"Mount", testMount},
		{"UploadChunks", testUploadChunks},
		{"UploadEmpty", testUploadEmpty},
		{"UploadLarge", testUploadLarge},
		{"CommitMismatch", testCommitMismatch},
		{"Resume", testResume},
		{"Busy", testBusy},
		{"Cancel", testCancel},
		{"UploadOtherRepo", testUploadOtherRepo},
		{"UploadUnknownID", testUploadUnknownID},
		{"AppendReaderError", testAppendReaderError},
		{"IndexUnknown", testIndexUnknown},
		{"PutIndexCAS", testPutIndexCAS},
		{"PutIndexConcurrent", testPutIndexConcurrent},
		{"Repos", testRepos},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, newDriver(t))
		})
	}
}

var algorithms = []digest.Algorithm{digest.SHA256, digest.SHA512}

func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: error %v, want %v", what, err, target)
	}
}

func mustPut(t *testing.T, d storage.Driver, repo string, content []byte) digest.Digest {
	t.Helper()
	dgst := digest.FromBytes(content)
	if err := d.Put(context.Background(), repo, dgst, content); err != nil {
		t.Fatalf("Put(%s, %s): %v", repo, dgst, err)
	}
	return dgst
}

// readBlob opens the blob and checks that it reads as want.
func readBlob(t *testing.T, d storage.Driver, repo string, dgst digest.Digest, want []byte) {
	t.Helper()
	r, err := d.Open(context.Background(), repo, dgst)
	if err != nil {
		t.Fatalf("Open(%s, %s): %v", repo, dgst, err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read %s: %v", dgst, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("blob %s in %s reads %q, want %q", dgst, repo, got, want)
	}
	if r.Info().Size != int64(len(want)) {
		t.Fatalf("blob %s: Info().Size = %d, want %d", dgst, r.Info().Size, len(want))
	}
}

func mustNewUpload(t *testing.T, d storage.Driver, repo string) storage.Upload {
	t.Helper()
	u, err := d.NewUpload(context.Background(), repo)
	if err != nil {
		t.Fatalf("NewUpload(%s): %v", repo, err)
	}
	t.Cleanup(func() { u.Close() })
	return u
}

func mustResume(t *testing.T, d storage.Driver, repo, id string) storage.Upload {
	t.Helper()
	u, err := d.Upload(context.Background(), repo, id)
	if err != nil {
		t.Fatalf("Upload(%s, %s): %v", repo, id, err)
	}
	t.Cleanup(func() { u.Close() })
	return u
}

func mustAppend(t *testing.T, u storage.Upload, p []byte) {
	t.Helper()
	before := u.Size()
	n, err := u.Append(context.Background(), bytes.NewReader(p))
	if err != nil || n != int64(len(p)) {
		t.Fatalf("Append(%d bytes) = %d, %v", len(p), n, err)
	}
	if u.Size() != before+n {
		t.Fatalf("Size after Append = %d, want %d", u.Size(), before+n)
	}
}

// patternReader yields n pseudo-random bytes without holding them: it
// cycles through a block whose odd length keeps the pattern from lining
// up with buffer sizes.
type patternReader struct {
	block []byte
	off   int64
	n     int64
}

func newPatternReader(seed uint64, n int64) *patternReader {
	block := make([]byte, 64<<10+7)
	r := rand.New(rand.NewPCG(seed, seed))
	for i := range block {
		block[i] = byte(r.Uint32())
	}
	return &patternReader{block: block, n: n}
}

func (r *patternReader) Read(p []byte) (int, error) {
	if r.off >= r.n {
		return 0, io.EOF
	}
	if rest := r.n - r.off; int64(len(p)) > rest {
		p = p[:rest]
	}
	total := 0
	for len(p) > 0 {
		m := copy(p, r.block[r.off%int64(len(r.block)):])
		p = p[m:]
		r.off += int64(m)
		total += m
	}
	return total, nil
}

// errReader returns its data together with err.
type errReader struct {
	data []byte
	err  error
}

func (r *errReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	if len(r.data) == 0 {
		return n, r.err
	}
	return n, nil
}
