package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestClients drives one registry with crane, skopeo, oras and regctl, on
// each backend. The parent builds a 3-layer image with crane; subtests use it.
func TestClients(t *testing.T) {
	forEachBackend(t, testClients)
}

func testClients(t *testing.T, be string) {
	crane := tool(t, "crane")
	r := startRegistry(t, regOpts{Backend: be})
	work := t.TempDir()
	var layers []string
	for i, n := range []int{1 << 10, 300 << 10, 2 << 20} {
		p := filepath.Join(work, "l"+string(rune('1'+i))+".tar")
		writeLayerTar(t, p, n)
		layers = append(layers, p)
	}
	img := r.Host + "/clients/base:v1"
	args := []string{crane, "append", "--oci-empty-base", "-t", img}
	for _, l := range layers {
		args = append(args, "-f", l)
	}
	out := strings.TrimSpace(runStdout(t, args...))
	baseDigest := strings.TrimSpace(runStdout(t, crane, "digest", img))
	if !strings.HasSuffix(out, "@"+baseDigest) {
		t.Fatalf("crane append printed %q, crane digest says %s", out, baseDigest)
	}
	var man struct {
		MediaType string `json:"mediaType"`
		Layers    []struct {
			Digest string `json:"digest"`
		} `json:"layers"`
	}
	if err := json.Unmarshal([]byte(runStdout(t, crane, "manifest", img)), &man); err != nil {
		t.Fatalf("crane manifest: %v", err)
	}
	if len(man.Layers) != 3 || man.MediaType != mtManifest {
		t.Fatalf("base image: mediaType %q with %d layers, want OCI manifest with 3", man.MediaType, len(man.Layers))
	}

	t.Run("crane", func(t *testing.T) {
		got := runStdout(t, crane, "manifest", img)
		if d := sha256Digest([]byte(got)); d != baseDigest {
			t.Errorf("crane manifest bytes hash to %s, want %s", d, baseDigest)
		}
		run(t, crane, "copy", img, r.Host+"/clients/copy:v1")
		if d := strings.TrimSpace(runStdout(t, crane, "digest", r.Host+"/clients/copy:v1")); d != baseDigest {
			t.Errorf("copied digest %s, want %s", d, baseDigest)
		}
		run(t, crane, "tag", img, "v2")
		if tags := lines(runStdout(t, crane, "ls", r.Host+"/clients/base")); !slices.Equal(sorted(tags), []string{"v1", "v2"}) {
			t.Errorf("crane ls: %q, want [v1 v2]", tags)
		}
		cat := lines(runStdout(t, crane, "catalog", r.Host))
		for _, want := range []string{"clients/base", "clients/copy"} {
			if !slices.Contains(cat, want) {
				t.Errorf("crane catalog %q lacks %s", cat, want)
			}
		}
		dir := filepath.Join(t.TempDir(), "oci")
		run(t, crane, "pull", "--format", "oci", img, dir)
		if d := layoutDigest(t, dir, ""); d != baseDigest {
			t.Errorf("crane pull --format oci: layout digest %s, want %s", d, baseDigest)
		}
		requireStorageOK(t, dir)
		run(t, crane, "validate", "--remote", r.Host+"/clients/copy:v1")
	})

	t.Run("skopeo", func(t *testing.T) {
		skopeo := tool(t, "skopeo")
		sk := []string{skopeo, "--insecure-policy"}
		src := filepath.Join(t.TempDir(), "src")
		run(t, crane, "pull", "--format", "oci", img, src)
		run(t, append(sk, "copy", "--dest-tls-verify=false", "oci:"+src, "docker://"+r.Host+"/skopeo/a:v1")...)
		run(t, append(sk, "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
			"docker://"+r.Host+"/skopeo/a:v1", "docker://"+r.Host+"/skopeo/b:v1")...)
		out := filepath.Join(t.TempDir(), "out")
		run(t, append(sk, "copy", "--src-tls-verify=false", "docker://"+r.Host+"/skopeo/b:v1", "oci:"+out+":v1")...)
		if d := layoutDigest(t, out, "v1"); d != baseDigest {
			t.Errorf("registry->oci: digest %s, want %s", d, baseDigest)
		}
		requireStorageOK(t, out)
		var insp struct {
			Digest string
			Layers []string
		}
		if err := json.Unmarshal([]byte(runStdout(t, append(sk, "inspect", "--tls-verify=false",
			"docker://"+r.Host+"/skopeo/b:v1")...)), &insp); err != nil {
			t.Fatalf("skopeo inspect: %v", err)
		}
		if insp.Digest != baseDigest || len(insp.Layers) != 3 {
			t.Errorf("skopeo inspect: digest %s with %d layers, want %s with 3", insp.Digest, len(insp.Layers), baseDigest)
		}
		var lt struct{ Tags []string }
		if err := json.Unmarshal([]byte(runStdout(t, append(sk, "list-tags", "--tls-verify=false",
			"docker://"+r.Host+"/skopeo/a")...)), &lt); err != nil {
			t.Fatalf("skopeo list-tags: %v", err)
		}
		if !slices.Equal(lt.Tags, []string{"v1"}) {
			t.Errorf("skopeo list-tags: %q, want [v1]", lt.Tags)
		}
		if be != backendFS {
			// The bucket holds an OCI image layout per repository under
			// the prefix: check the keys by listing versitygw's posix dir.
			layers := make([]string, len(man.Layers))
			for i, l := range man.Layers {
				layers[i] = l.Digest
			}
			requireLayout(t, r.StorageRoot(), "skopeo/a", "v1", baseDigest, layers...)
			requireLayout(t, r.StorageRoot(), "clients/base", "v1", baseDigest, layers...)
			return
		}
		// The storage root is an OCI image layout per repository: skopeo
		// reads it directly.
		direct := filepath.Join(t.TempDir(), "direct")
		run(t, append(sk, "copy", "oci:"+filepath.Join(r.Root, "skopeo/a")+":v1", "oci:"+direct+":v1")...)
		if d := layoutDigest(t, direct, "v1"); d != baseDigest {
			t.Errorf("copy from the registry's storage layout: digest %s, want %s", d, baseDigest)
		}
		run(t, append(sk, "copy", "oci:"+filepath.Join(r.Root, "clients/base")+":v1", "oci:"+direct+":base")...)
		if d := layoutDigest(t, direct, "base"); d != baseDigest {
			t.Errorf("copy from the storage layout of clients/base: digest %s, want %s", d, baseDigest)
		}
	})

	t.Run("oras", func(t *testing.T) {
		oras := tool(t, "oras")
		dir := t.TempDir()
		must(t, os.WriteFile(filepath.Join(dir, "a.txt"), []byte("hello oras\n"), 0o644))
		must(t, os.WriteFile(filepath.Join(dir, "b.bin"), randBytes(t, 100<<10), 0o644))
		must(t, os.WriteFile(filepath.Join(dir, "sig.txt"), []byte("signature\n"), 0o644))
		art := r.Host + "/oras/art:v1"
		runIn(t, dir, oras, "push", "--plain-http", "--artifact-type", "application/vnd.example.thing",
			art, "a.txt:text/plain", "b.bin")
		var am struct {
			ArtifactType string `json:"artifactType"`
			Layers       []struct {
				Digest      string            `json:"digest"`
				Annotations map[string]string `json:"annotations"`
			} `json:"layers"`
		}
		must(t, json.Unmarshal([]byte(runStdout(t, oras, "manifest", "fetch", "--plain-http", art)), &am))
		if am.ArtifactType != "application/vnd.example.thing" || len(am.Layers) != 2 {
			t.Errorf("oras artifact manifest: artifactType %q, %d layers", am.ArtifactType, len(am.Layers))
		}
		runIn(t, dir, oras, "attach", "--plain-http", "--artifact-type", "application/vnd.example.sig",
			img, "sig.txt:text/plain")
		var disc struct {
			Digest    string `json:"digest"`
			Referrers []struct {
				Digest       string `json:"digest"`
				ArtifactType string `json:"artifactType"`
			} `json:"referrers"`
		}
		dout := runStdout(t, oras, "discover", "--plain-http", "--format", "json", img)
		if err := json.Unmarshal([]byte(dout), &disc); err != nil {
			t.Fatalf("oras discover json: %v\n%s", err, dout)
		}
		if disc.Digest != baseDigest || len(disc.Referrers) != 1 || disc.Referrers[0].ArtifactType != "application/vnd.example.sig" {
			t.Errorf("oras discover: %s", dout)
		}
		pulled := t.TempDir()
		run(t, oras, "pull", "--plain-http", "-o", pulled, art)
		for _, f := range []string{"a.txt", "b.bin"} {
			want, _ := os.ReadFile(filepath.Join(dir, f))
			got, err := os.ReadFile(filepath.Join(pulled, f))
			if err != nil || string(got) != string(want) {
				t.Errorf("oras pull: %s differs (%v)", f, err)
			}
		}
		repos := lines(runStdout(t, oras, "repo", "ls", "--plain-http", r.Host))
		for _, want := range []string{"clients/base", "oras/art"} {
			if !slices.Contains(repos, want) {
				t.Errorf("oras repo ls %q lacks %s", repos, want)
			}
		}
		run(t, oras, "tag", "--plain-http", art, "v2")
		if tags := lines(runStdout(t, oras, "repo", "tags", "--plain-http", r.Host+"/oras/art")); !slices.Equal(sorted(tags), []string{"v1", "v2"}) {
			t.Errorf("oras repo tags: %q, want [v1 v2]", tags)
		}
		run(t, oras, "manifest", "delete", "--plain-http", "--force", r.Host+"/oras/art:v1")
		runFail(t, oras, "manifest", "fetch", "--plain-http", r.Host+"/oras/art:v1")
		runFail(t, oras, "manifest", "fetch", "--plain-http", r.Host+"/oras/art:v2")
		if tags := lines(runStdout(t, oras, "repo", "tags", "--plain-http", r.Host+"/oras/art")); len(tags) != 0 {
			t.Errorf("after manifest delete, oras repo tags: %q, want none", tags)
		}
	})

	t.Run("regctl", func(t *testing.T) {
		regctl := tool(t, "regctl")
		skopeo := tool(t, "skopeo")
		rc := []string{regctl, "--host", "reg=" + r.Host + ",tls=disabled"}
		run(t, append(rc, "image", "copy", img, r.Host+"/regctl/a:v1")...)
		dig := strings.TrimSpace(runStdout(t, append(rc, "image", "digest", r.Host+"/regctl/a:v1")...))
		if dig != baseDigest {
			t.Errorf("regctl image copy: digest %s, want %s", dig, baseDigest)
		}
		lay := filepath.Join(t.TempDir(), "lay")
		run(t, skopeo, "--insecure-policy", "copy", "--src-tls-verify=false", "docker://"+img, "oci:"+lay+":v1")
		run(t, append(rc, "image", "copy", "ocidir://"+lay+":v1", r.Host+"/regctl/b:v1")...)
		run(t, append(rc, "image", "copy", "ocidir://"+lay+":v1", r.Host+"/regctl/b:v2")...)
		if tags := lines(runStdout(t, append(rc, "tag", "ls", r.Host+"/regctl/b")...)); !slices.Equal(sorted(tags), []string{"v1", "v2"}) {
			t.Errorf("regctl tag ls: %q, want [v1 v2]", tags)
		}
		raw := runStdout(t, append(rc, "manifest", "get", "--format", "raw-body", r.Host+"/regctl/b:v1")...)
		if d := sha256Digest([]byte(raw)); d != baseDigest {
			t.Errorf("regctl manifest get raw-body hashes to %s, want %s", d, baseDigest)
		}
		tarPath := filepath.Join(t.TempDir(), "export.tar")
		run(t, append(rc, "image", "export", r.Host+"/regctl/b:v1", tarPath)...)
		if fi, err := os.Stat(tarPath); err != nil || fi.Size() < 2<<20 {
			t.Errorf("regctl image export: %v (size %v)", err, fi)
		}
		run(t, append(rc, "tag", "delete", r.Host+"/regctl/b:v2")...)
		if tags := lines(runStdout(t, append(rc, "tag", "ls", r.Host+"/regctl/b")...)); !slices.Equal(tags, []string{"v1"}) {
			t.Errorf("after regctl tag delete: %q, want [v1]", tags)
		}
		if d := strings.TrimSpace(runStdout(t, append(rc, "image", "digest", r.Host+"/regctl/b:v1")...)); d != baseDigest {
			t.Errorf("tag delete hurt the other tag: v1 is %s, want %s", d, baseDigest)
		}
	})

	t.Run("multiarch", func(t *testing.T) {
		skopeo := tool(t, "skopeo")
		repo := r.Host + "/multi/img"
		run(t, crane, "mutate", img, "--set-platform", "linux/amd64", "-t", repo+":amd64")
		run(t, crane, "mutate", img, "--set-platform", "linux/arm64", "-t", repo+":arm64")
		run(t, crane, "index", "append", "-m", repo+":amd64", "-m", repo+":arm64", "-t", repo+":index")
		idxDigest := strings.TrimSpace(runStdout(t, crane, "digest", repo+":index"))
		var idx struct {
			MediaType string `json:"mediaType"`
			Manifests []struct {
				Digest   string `json:"digest"`
				Platform struct {
					Architecture string `json:"architecture"`
				} `json:"platform"`
			} `json:"manifests"`
		}
		must(t, json.Unmarshal([]byte(runStdout(t, crane, "manifest", repo+":index")), &idx))
		if len(idx.Manifests) != 2 {
			t.Fatalf("index has %d manifests, want 2", len(idx.Manifests))
		}
		for i, arch := range []string{"amd64", "arm64"} {
			want := strings.TrimSpace(runStdout(t, crane, "digest", repo+":"+arch))
			if idx.Manifests[i].Digest != want || idx.Manifests[i].Platform.Architecture != arch {
				t.Errorf("index entry %d: %s %s, want %s %s", i, idx.Manifests[i].Digest, idx.Manifests[i].Platform.Architecture, want, arch)
			}
		}
		// crane keeps the index bytes: same digest in an OCI layout.
		cp := filepath.Join(t.TempDir(), "crane")
		run(t, crane, "pull", "--format", "oci", repo+":index", cp)
		if d := layoutDigest(t, cp, ""); d != idxDigest {
			t.Errorf("crane pull --format oci of the index: digest %s, want %s", d, idxDigest)
		}
		requireStorageOK(t, cp)
		// skopeo 1.9.3 re-serializes an index whose descriptors carry
		// artifactType (crane v0.22 adds it) and drops that field, so its
		// copy of crane's index cannot keep the digest ("cannot modify it:
		// Instructed to preserve digests"). Check it copies every image.
		out := filepath.Join(t.TempDir(), "multi")
		run(t, skopeo, "--insecure-policy", "copy", "--all", "--src-tls-verify=false",
			"docker://"+repo+":index", "oci:"+out+":index")
		requireStorageOK(t, out)
		var got struct {
			Manifests []struct {
				Digest   string `json:"digest"`
				Platform struct {
					Architecture string `json:"architecture"`
				} `json:"platform"`
			} `json:"manifests"`
		}
		b, err := os.ReadFile(filepath.Join(out, "blobs", "sha256", strings.TrimPrefix(layoutDigest(t, out, "index"), "sha256:")))
		must(t, err)
		must(t, json.Unmarshal(b, &got))
		if len(got.Manifests) != 2 {
			t.Fatalf("skopeo --all: index with %d manifests", len(got.Manifests))
		}
		for i := range got.Manifests {
			if got.Manifests[i].Digest != idx.Manifests[i].Digest || got.Manifests[i].Platform.Architecture != idx.Manifests[i].Platform.Architecture {
				t.Errorf("skopeo --all: entry %d is %+v, want %+v", i, got.Manifests[i], idx.Manifests[i])
			}
		}
		// An index without artifactType is copied byte for byte.
		plain, err := json.Marshal(map[string]any{
			"schemaVersion": 2,
			"mediaType":     "application/vnd.oci.image.index.v1+json",
			"manifests": []map[string]any{
				{"mediaType": mtManifest, "digest": idx.Manifests[0].Digest, "size": manifestSize(t, crane, repo+":amd64"), "platform": map[string]string{"os": "linux", "architecture": "amd64"}},
				{"mediaType": mtManifest, "digest": idx.Manifests[1].Digest, "size": manifestSize(t, crane, repo+":arm64"), "platform": map[string]string{"os": "linux", "architecture": "arm64"}},
			},
		})
		must(t, err)
		res := r.do(t, "PUT", "/v2/multi/img/manifests/plain", map[string]string{"Content-Type": "application/vnd.oci.image.index.v1+json"}, plain)
		if res.Status != 201 {
			t.Fatalf("PUT plain index: %s", res)
		}
		out2 := filepath.Join(t.TempDir(), "plain")
		run(t, skopeo, "--insecure-policy", "copy", "--all", "--preserve-digests", "--src-tls-verify=false",
			"docker://"+repo+":plain", "oci:"+out2+":plain")
		if d := layoutDigest(t, out2, "plain"); d != sha256Digest(plain) {
			t.Errorf("skopeo --all --preserve-digests: index digest %s, want %s", d, sha256Digest(plain))
		}
		requireStorageOK(t, out2)
		run(t, crane, "validate", "--remote", repo+":index")
	})

	t.Run("delete-by-digest", func(t *testing.T) {
		repo := r.Host + "/del/img"
		run(t, crane, "copy", img, repo+":keep")
		out := filepath.Join(work, "other.tar")
		writeLayerTar(t, out, 4096)
		run(t, crane, "append", "--oci-empty-base", "-f", out, "-t", repo+":a")
		dig := strings.TrimSpace(runStdout(t, crane, "digest", repo+":a"))
		run(t, crane, "tag", repo+":a", "b")
		run(t, crane, "tag", repo+":a", "c")
		if tags := sorted(lines(runStdout(t, crane, "ls", repo))); !slices.Equal(tags, []string{"a", "b", "c", "keep"}) {
			t.Fatalf("crane ls before delete: %q", tags)
		}
		run(t, crane, "delete", repo+"@"+dig)
		if tags := lines(runStdout(t, crane, "ls", repo)); !slices.Equal(tags, []string{"keep"}) {
			t.Errorf("after deleting %s, crane ls: %q, want [keep]", dig, tags)
		}
		runFail(t, crane, "manifest", repo+"@"+dig)
		for _, tag := range []string{"a", "b", "c"} {
			runFail(t, crane, "manifest", repo+":"+tag)
		}
		if d := strings.TrimSpace(runStdout(t, crane, "digest", repo+":keep")); d != baseDigest {
			t.Errorf("keep: %s, want %s", d, baseDigest)
		}
	})

	requireStorageOK(t, r.StorageRoot())
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func manifestSize(t *testing.T, crane, ref string) int {
	t.Helper()
	return len(runStdout(t, crane, "manifest", ref))
}
