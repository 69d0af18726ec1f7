package main

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
)

const blockSize = 1 << 20

// genReader is a deterministic stream of size bytes: a pseudo-random 1 MiB
// block (a function of seed) repeated, with the first 16 bytes of every
// block overwritten by (seed, block number), so no two blocks of any stream
// are equal. It costs the client about one memcpy per byte, leaving the CPU
// to the server under test.
type genReader struct {
	block []byte
	seed  uint64
	pos   int64
	size  int64
}

func newGen(seed uint64, size int64) *genReader {
	b := make([]byte, blockSize)
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	c := rand.NewChaCha8(key)
	_, _ = c.Read(b)
	return &genReader{block: b, seed: seed, size: size}
}

func (g *genReader) Read(p []byte) (int, error) {
	if g.pos >= g.size {
		return 0, io.EOF
	}
	if rem := g.size - g.pos; int64(len(p)) > rem {
		p = p[:rem]
	}
	n := 0
	for n < len(p) {
		off := int(g.pos % blockSize)
		m := copy(p[n:], g.block[off:])
		if off < 16 {
			var stamp [16]byte
			binary.LittleEndian.PutUint64(stamp[:8], g.seed)
			binary.LittleEndian.PutUint64(stamp[8:], uint64(g.pos/blockSize))
			copy(p[n:n+m], stamp[off:])
		}
		n += m
		g.pos += int64(m)
	}
	return n, nil
}

// Reset rewinds the stream for another pass.
func (g *genReader) Reset() { g.pos = 0 }

// digestOf is the sha256 digest of the whole stream (a first pass over it).
func digestOf(g *genReader) string {
	g.Reset()
	h := sha256.New()
	buf := make([]byte, 256<<10)
	if _, err := io.CopyBuffer(h, struct{ io.Reader }{g}, buf); err != nil {
		panic(err)
	}
	g.Reset()
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// genBytes returns the stream of (seed, size) in memory: for small blobs only.
func genBytes(seed uint64, size int) []byte {
	b := make([]byte, size)
	if _, err := io.ReadFull(newGen(seed, int64(size)), b); err != nil {
		panic(fmt.Sprint("gen: ", err))
	}
	return b
}

func sha256Digest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}
