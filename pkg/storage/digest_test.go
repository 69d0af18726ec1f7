package storage_test

import (
	"errors"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/berthreg/berth/pkg/storage"
)

func TestValidateDigest(t *testing.T) {
	t.Parallel()
	hello := []byte("hello")
	tests := []struct {
		name        string
		d           digest.Digest
		unsupported bool
		ok          bool
	}{
		{"sha256", digest.SHA256.FromBytes(hello), false, true},
		{"sha512", digest.SHA512.FromBytes(hello), false, true},
		{"sha384", digest.SHA384.FromBytes(hello), true, false},
		{"unknown algorithm", "md5:5d41402abc4b2a76b9719d911017c592", true, false},
		{"no separator", "sha256", false, false},
		{"empty", "", false, false},
		{"short hex", "sha256:abcd", false, false},
		{"upper-case hex", digest.Digest("sha256:" + "AB" + string(digest.SHA256.FromBytes(hello))[9:]), false, false},
		{"traversal", "sha256:../../etc/passwd", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := storage.ValidateDigest(tt.d)
			if tt.ok != (err == nil) {
				t.Fatalf("ValidateDigest(%q) = %v, want ok=%v", tt.d, err, tt.ok)
			}
			if got := errors.Is(err, storage.ErrUnsupportedAlgo); got != tt.unsupported {
				t.Fatalf("ValidateDigest(%q) = %v; errors.Is ErrUnsupportedAlgo = %v, want %v", tt.d, err, got, tt.unsupported)
			}
		})
	}
}

func TestVerifyContent(t *testing.T) {
	t.Parallel()
	p := []byte("content")
	for _, alg := range []digest.Algorithm{digest.SHA256, digest.SHA512} {
		if err := storage.VerifyContent(alg.FromBytes(p), p); err != nil {
			t.Errorf("%s: VerifyContent = %v", alg, err)
		}
		err := storage.VerifyContent(alg.FromBytes(p), []byte("other"))
		if !errors.Is(err, storage.ErrDigestMismatch) {
			t.Errorf("%s: VerifyContent of other content = %v, want ErrDigestMismatch", alg, err)
		}
	}
	if err := storage.VerifyContent(digest.SHA384.FromBytes(p), p); !errors.Is(err, storage.ErrUnsupportedAlgo) {
		t.Errorf("sha384: VerifyContent = %v, want ErrUnsupportedAlgo", err)
	}
}
