package registry

import (
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// Garbage collection marks the blobs it is about to delete in the
// repository's index.json (annotations are allowed on an OCI image index),
// written with the same compare-and-set as every manifest push:
//
//	"annotations": {
//	  "dev.berth.gc.pending": "sha256:... sha256:...",
//	  "dev.berth.gc.since":   "2026-11-27T06:50:00Z"
//	}
//
// A manifest push whose index update sees one of its blobs pending fails
// with MANIFEST_BLOB_UNKNOWN instead of being acknowledged, and a push
// whose update landed before the mark makes the collector's
// compare-and-set fail, so it recomputes what is referenced. Either way no
// acknowledged manifest refers to a deleted blob, even when two processes
// collect or push the same repository at once.
//
// Clearing a mark leaves "dev.berth.gc.last" (when it was set) behind:
// index versions are hashes of the file's bytes, so an index restored
// byte for byte after a pass would let a push that read it before the
// mark pass its compare-and-set after the deletions.
const (
	annGCPending = "dev.berth.gc.pending"
	annGCSince   = "dev.berth.gc.since"
	annGCLast    = "dev.berth.gc.last"
)

// gcMarkTTL is how long a mark holds. A collector that crashed leaves its
// mark behind; after the TTL it is ignored and cleared by the next pass.
const gcMarkTTL = 10 * time.Minute

// gcPending returns the digests a live mark protects from new references.
func (x *ociIndex) gcPending(now time.Time) map[digest.Digest]bool {
	since, ok := x.gcMarkTime()
	if !ok || now.Sub(since) > gcMarkTTL {
		return nil
	}
	out := map[digest.Digest]bool{}
	for _, f := range strings.Fields(x.Annotations[annGCPending]) {
		out[digest.Digest(f)] = true
	}
	return out
}

func (x *ociIndex) gcMarkTime() (time.Time, bool) {
	v, ok := x.Annotations[annGCSince]
	if !ok {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	return t, err == nil
}

// setGCMark records pending deletions made at since.
func (x *ociIndex) setGCMark(pending []digest.Digest, since time.Time) {
	if x.Annotations == nil {
		x.Annotations = map[string]string{}
	}
	parts := make([]string, len(pending))
	for i, d := range pending {
		parts[i] = d.String()
	}
	x.Annotations[annGCPending] = strings.Join(parts, " ")
	x.Annotations[annGCSince] = since.UTC().Format(time.RFC3339Nano)
}

// clearGCMark removes the mark, recording its time as the last one, so
// the index never returns to the bytes it had before the mark.
func (x *ociIndex) clearGCMark() {
	if since, ok := x.Annotations[annGCSince]; ok {
		x.Annotations[annGCLast] = since
	}
	delete(x.Annotations, annGCPending)
	delete(x.Annotations, annGCSince)
	if len(x.Annotations) == 0 {
		x.Annotations = nil
	}
}
