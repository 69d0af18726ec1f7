package storage

import (
	_ "crypto/sha256" // register digest.SHA256
	_ "crypto/sha512" // register digest.SHA512
	"fmt"

	"github.com/opencontainers/go-digest"
)

// SupportedAlgorithm reports whether drivers store blobs under digests of
// algorithm a: sha256 and sha512.
func SupportedAlgorithm(a digest.Algorithm) bool {
	return a == digest.SHA256 || a == digest.SHA512
}

// ValidateDigest checks that d is well formed and of a supported algorithm.
// An unknown or unsupported algorithm gives an error wrapping
// ErrUnsupportedAlgo; a malformed digest gives go-digest's validation error.
func ValidateDigest(d digest.Digest) error {
	switch err := d.Validate(); {
	case err == digest.ErrDigestUnsupported:
		return fmt.Errorf("digest %q: %w", d, ErrUnsupportedAlgo)
	case err != nil:
		return fmt.Errorf("digest %q: %w", d, err)
	case !SupportedAlgorithm(d.Algorithm()):
		return fmt.Errorf("digest %q: %w", d, ErrUnsupportedAlgo)
	}
	return nil
}

// VerifyContent checks that p has digest d: ValidateDigest's errors, or one
// wrapping ErrDigestMismatch.
func VerifyContent(d digest.Digest, p []byte) error {
	if err := ValidateDigest(d); err != nil {
		return err
	}
	if got := d.Algorithm().FromBytes(p); got != d {
		return fmt.Errorf("content is %s, expected %s: %w", got, d, ErrDigestMismatch)
	}
	return nil
}
