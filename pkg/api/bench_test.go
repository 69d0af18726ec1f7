package api_test

import (
	"bytes"
	"crypto/rand"
	"io"
	"net/http"
	"testing"

	"github.com/opencontainers/go-digest"
)

// benchGet fetches path b.N times, checking the status and draining the body.
func benchGet(b *testing.B, ts *testServer, path string, header map[string]string, size int64) {
	b.Helper()
	b.SetBytes(size)
	b.ReportAllocs()
	for b.Loop() {
		req, err := http.NewRequestWithContext(b.Context(), "GET", ts.URL+path, nil)
		if err != nil {
			b.Fatal(err)
		}
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := ts.client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || n != size {
			b.Fatalf("GET %s: %d, %d bytes, %v", path, resp.StatusCode, n, err)
		}
	}
}

func BenchmarkManifestGet(b *testing.B) {
	ts := newServer(b)
	benchGet(b, ts, manifestPath("test", "latest"), h("Accept", mtOCIManifest), int64(len(imgManifest)))
}

func BenchmarkBlobGet(b *testing.B) {
	ts := newServer(b)
	data := make([]byte, 1<<20)
	_, _ = rand.Read(data)
	d := ts.seedBlob(b, "bench", data)
	benchGet(b, ts, blobPath("bench", d), nil, int64(len(data)))
}

func BenchmarkUpload(b *testing.B) {
	ts := newServer(b)
	data := make([]byte, 16<<20)
	_, _ = rand.Read(data)
	path := ts.URL + "/v2/bench/blobs/uploads/?digest=" + digest.FromBytes(data).String()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		req, err := http.NewRequestWithContext(b.Context(), "POST", path, bytes.NewReader(data))
		if err != nil {
			b.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/octet-stream")
		resp, err := ts.client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			b.Fatalf("POST: %d", resp.StatusCode)
		}
	}
}
