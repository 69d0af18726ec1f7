package main

// Berth as a child process, and the registry operations the bench drives.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// buildBerth builds ./cmd/registry of the module holding the working
// directory into dir.
func buildBerth(dir string) (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" || strings.TrimSpace(string(out)) == os.DevNull {
		return "", fmt.Errorf("bench: run from inside the berth module (go env GOMOD: %v)", err)
	}
	bin := filepath.Join(dir, "registry")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/registry")
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(out)))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("bench: build registry: %w", err)
	}
	return bin, nil
}

// berthProc is a running registry.
type berthProc struct {
	cmd  *exec.Cmd
	base string
	root string // storage root
	log  string
}

func startBerth(bin, dir string) (*berthProc, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	root := filepath.Join(dir, "data")
	logf := filepath.Join(dir, "log")
	cfg := map[string]any{
		"http":    map[string]any{"address": "127.0.0.1", "port": strconv.Itoa(port)},
		"storage": map[string]any{"rootDirectory": root},
		"log":     map[string]any{"level": "warn", "output": logf},
	}
	js, _ := json.Marshal(cfg)
	cfgPath := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfgPath, js, 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "serve", cfgPath)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	b := &berthProc{cmd: cmd, base: fmt.Sprintf("http://127.0.0.1:%d", port), root: root, log: logf}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := client.Get(b.base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return b, nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.stop()
	return nil, errors.New("bench: registry not ready after 30s (see " + logf + ")")
}

func (b *berthProc) pid() int { return b.cmd.Process.Pid }

func (b *berthProc) stop() {
	b.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { b.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		b.cmd.Process.Kill()
		<-done
	}
}

// blobPath is where the fs driver keeps a blob (an OCI image layout).
func (b *berthProc) blobPath(repo, dgst string) string {
	alg, hex, _ := strings.Cut(dgst, ":")
	return filepath.Join(b.root, repo, "blobs", alg, hex)
}

// do sends a request and requires the status want, draining the body.
func do(ctx context.Context, method, u string, body io.Reader, size int64, hdr map[string]string, want int) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.ContentLength = size
		if size == 0 {
			req.Body = http.NoBody
		}
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != want {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("%s %s: %s, want %d: %s", method, u, resp.Status, want, bytes.TrimSpace(msg))
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp, nil
}

// uploadURL starts a session and returns its absolute Location.
func (b *berthProc) uploadURL(ctx context.Context, repo string) (*url.URL, error) {
	resp, err := do(ctx, http.MethodPost, b.base+"/v2/"+repo+"/blobs/uploads/", nil, 0, nil, http.StatusAccepted)
	if err != nil {
		return nil, err
	}
	base, _ := url.Parse(b.base + "/")
	return base.Parse(resp.Header.Get("Location"))
}

func withDigest(u *url.URL, dgst string) string {
	q := u.Query()
	q.Set("digest", dgst)
	v := *u
	v.RawQuery = q.Encode()
	return v.String()
}

// pushBlob uploads a blob monolithically: POST, then PUT with the body.
func (b *berthProc) pushBlob(ctx context.Context, repo, dgst string, body io.Reader, size int64) error {
	u, err := b.uploadURL(ctx, repo)
	if err != nil {
		return err
	}
	_, err = do(ctx, http.MethodPut, withDigest(u, dgst), body, size, map[string]string{"Content-Type": "application/octet-stream"}, http.StatusCreated)
	return err
}

// pushBlobPatch uploads a blob as clients such as containerd do: POST,
// PATCH streaming the body, then PUT with the digest and no body.
func (b *berthProc) pushBlobPatch(ctx context.Context, repo, dgst string, body io.Reader, size int64) error {
	u, err := b.uploadURL(ctx, repo)
	if err != nil {
		return err
	}
	resp, err := do(ctx, http.MethodPatch, u.String(), body, size, map[string]string{"Content-Type": "application/octet-stream"}, http.StatusAccepted)
	if err != nil {
		return err
	}
	if loc := resp.Header.Get("Location"); loc != "" {
		if u, err = u.Parse(loc); err != nil {
			return err
		}
	}
	_, err = do(ctx, http.MethodPut, withDigest(u, dgst), nil, 0, nil, http.StatusCreated)
	return err
}

// getTo GETs u into w through a 1 MiB buffer, returning the byte count.
func getTo(ctx context.Context, u string, w io.Writer, hdr map[string]string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return 0, fmt.Errorf("GET %s: %s: %s", u, resp.Status, bytes.TrimSpace(msg))
	}
	n, err := io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{resp.Body}, make([]byte, 1<<20))
	if err == nil && resp.ContentLength >= 0 && n != resp.ContentLength {
		err = fmt.Errorf("GET %s: %d bytes, Content-Length %d", u, n, resp.ContentLength)
	}
	return n, err
}

const (
	mtManifest = "application/vnd.oci.image.manifest.v1+json"
	mtConfig   = "application/vnd.oci.image.config.v1+json"
	mtLayer    = "application/vnd.oci.image.layer.v1.tar"
)

// image is a small image: one layer, a config and a manifest.
type image struct {
	layer, config, manifest []byte
	layerD, configD, mfD    string
}

func newImage(seed uint64, layerSize int) *image {
	im := &image{layer: genBytes(seed, layerSize)}
	im.layerD = sha256Digest(im.layer)
	im.config = fmt.Appendf(nil, `{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[%q]},"config":{"Labels":{"seed":"%d"}}}`, im.layerD, seed)
	im.configD = sha256Digest(im.config)
	im.manifest = fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":%q,"digest":%q,"size":%d},"layers":[{"mediaType":%q,"digest":%q,"size":%d}]}`,
		mtManifest, mtConfig, im.configD, len(im.config), mtLayer, im.layerD, len(im.layer))
	im.mfD = sha256Digest(im.manifest)
	return im
}

func (b *berthProc) pushImage(ctx context.Context, repo, tag string, im *image) error {
	if err := b.pushBlob(ctx, repo, im.layerD, bytes.NewReader(im.layer), int64(len(im.layer))); err != nil {
		return err
	}
	if err := b.pushBlob(ctx, repo, im.configD, bytes.NewReader(im.config), int64(len(im.config))); err != nil {
		return err
	}
	_, err := do(ctx, http.MethodPut, b.base+"/v2/"+repo+"/manifests/"+tag, bytes.NewReader(im.manifest), int64(len(im.manifest)),
		map[string]string{"Content-Type": mtManifest}, http.StatusCreated)
	return err
}

// pullImage fetches the manifest by tag, then its blobs, checking digests.
func (b *berthProc) pullImage(ctx context.Context, repo, tag string) error {
	var mf bytes.Buffer
	if _, err := getTo(ctx, b.base+"/v2/"+repo+"/manifests/"+tag, &mf, map[string]string{"Accept": mtManifest}); err != nil {
		return err
	}
	var m struct {
		Config struct{ Digest string }   `json:"config"`
		Layers []struct{ Digest string } `json:"layers"`
	}
	if err := json.Unmarshal(mf.Bytes(), &m); err != nil {
		return fmt.Errorf("manifest %s:%s: %w", repo, tag, err)
	}
	ds := []string{m.Config.Digest}
	for _, l := range m.Layers {
		ds = append(ds, l.Digest)
	}
	for _, d := range ds {
		var blob bytes.Buffer
		if _, err := getTo(ctx, b.base+"/v2/"+repo+"/blobs/"+d, &blob, nil); err != nil {
			return err
		}
		if got := sha256Digest(blob.Bytes()); got != d {
			return fmt.Errorf("blob %s of %s:%s reads as %s", d, repo, tag, got)
		}
	}
	return nil
}
