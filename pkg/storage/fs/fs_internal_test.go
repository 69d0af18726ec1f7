package fs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/storage"
)

// TestMountCopy covers Mount's fallback when the blob cannot be linked.
func TestMountCopy(t *testing.T) {
	ctx := context.Background()
	d, err := New(t.TempDir(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	content := []byte("copied, not linked")
	dgst := digest.FromBytes(content)
	if err := d.Put(ctx, "src", dgst, content); err != nil {
		t.Fatal(err)
	}
	src, _ := d.blobPath("src", dgst)
	dst, _ := d.blobPath("dst", dgst)
	if err := d.ensureLayout("dst", dgst.Algorithm()); err != nil {
		t.Fatal(err)
	}
	if err := d.copyFile(ctx, src, dst); err != nil {
		t.Fatalf("copyFile: %v", err)
	}
	got, err := os.ReadFile(dst)
	if err != nil || string(got) != string(content) {
		t.Fatalf("copy holds %q, %v", got, err)
	}
	si, _ := os.Stat(src)
	di, _ := os.Stat(dst)
	if os.SameFile(si, di) {
		t.Fatal("copy is a link")
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	other, _ := d.blobPath("other", dgst)
	d.ensureLayout("other", dgst.Algorithm())
	if err := d.copyFile(cancelled, src, other); !errors.Is(err, context.Canceled) {
		t.Fatalf("copyFile with cancelled ctx: %v", err)
	}
	if _, err := os.Stat(other); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("cancelled copy left %s: %v", other, err)
	}
	if entries, _ := os.ReadDir(filepath.Join(d.root, tmpDir)); len(entries) != 0 {
		t.Fatalf("_tmp holds %v", entries)
	}
}

// TestUploadEnded checks that a session is unusable after Close, Commit and
// Cancel, and that a cancelled ctx stops Append.
func TestUploadEnded(t *testing.T) {
	ctx := context.Background()
	d, err := New(t.TempDir(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	for _, end := range []string{"Close", "Commit", "Cancel"} {
		u, err := d.NewUpload(ctx, "r")
		if err != nil {
			t.Fatal(err)
		}
		switch end {
		case "Close":
			err = u.Close()
		case "Commit":
			_, err = u.Commit(ctx, digest.FromBytes(nil))
		case "Cancel":
			err = u.Cancel(ctx)
		}
		if err != nil {
			t.Fatalf("%s: %v", end, err)
		}
		_, err = u.Append(ctx, strings.NewReader("x"))
		if !errors.Is(err, storage.ErrUploadUnknown) {
			t.Errorf("Append after %s: %v", end, err)
		}
		if _, err := u.Commit(ctx, digest.FromBytes(nil)); !errors.Is(err, storage.ErrUploadUnknown) {
			t.Errorf("Commit after %s: %v", end, err)
		}
		if err := u.Cancel(ctx); !errors.Is(err, storage.ErrUploadUnknown) {
			t.Errorf("Cancel after %s: %v", end, err)
		}
		if err := u.Close(); err != nil {
			t.Errorf("Close after %s: %v", end, err)
		}
	}

	u, err := d.NewUpload(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if n, err := u.Append(cancelled, strings.NewReader("x")); n != 0 || !errors.Is(err, context.Canceled) {
		t.Fatalf("Append with cancelled ctx = %d, %v", n, err)
	}
}

// TestCommitCrashRemnant: a crash between Commit's rename and the removal
// of the session leaves info.json without data; resuming reports the session
// unknown and removes the remnant.
func TestCommitCrashRemnant(t *testing.T) {
	ctx := context.Background()
	d, err := New(t.TempDir(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	u, err := d.NewUpload(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	u.Close()
	dir := d.sessionDir(u.ID())
	if err := os.Remove(filepath.Join(dir, dataFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Upload(ctx, "r", u.ID()); !errors.Is(err, storage.ErrUploadUnknown) {
		t.Fatalf("Upload: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("remnant %s: %v", dir, err)
	}
}
