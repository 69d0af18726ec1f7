package fs_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berthreg/berth/pkg/storage/fs"
)

// TestSkopeoReadsLayout copies an image out of a repository with skopeo's
// oci: transport, which reads the layout directly.
func TestSkopeoReadsLayout(t *testing.T) {
	skopeo, err := exec.LookPath("skopeo")
	if err != nil || testing.Short() {
		t.Skip("needs skopeo")
	}
	ctx := context.Background()
	root := t.TempDir()
	d := newDriver(t, root)
	const repo = "library/hello"

	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	tw.WriteHeader(&tar.Header{Name: "hello.txt", Mode: 0o644, Size: 5})
	tw.Write([]byte("hello"))
	tw.Close()
	layerDesc := upload(t, d, repo, ocispec.MediaTypeImageLayer, layer.Bytes())

	config, _ := json.Marshal(ocispec.Image{
		Platform: ocispec.Platform{Architecture: "amd64", OS: "linux"},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{layerDesc.Digest}},
	})
	configDesc := upload(t, d, repo, ocispec.MediaTypeImageConfig, config)

	manifest, _ := json.Marshal(ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    configDesc,
		Layers:    []ocispec.Descriptor{layerDesc},
	})
	manifestDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(manifest), Size: int64(len(manifest))}
	if err := d.Put(ctx, repo, manifestDesc.Digest, manifest); err != nil {
		t.Fatal(err)
	}
	manifestDesc.Annotations = map[string]string{ocispec.AnnotationRefName: "v1"}
	index, _ := json.Marshal(ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{manifestDesc},
	})
	if err := d.PutIndex(ctx, repo, index, ""); err != nil {
		t.Fatal(err)
	}

	out := filepath.Join(t.TempDir(), "out")
	cmd := exec.CommandContext(ctx, skopeo, "--insecure-policy", "copy",
		"oci:"+filepath.Join(root, repo)+":v1", "oci:"+out+":copied")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy: %v\n%s", err, b)
	}
	d2 := newDriver(t, filepath.Dir(out))
	// skopeo may recompress the layer; the config goes across unchanged.
	if _, err := d2.Stat(ctx, "out", configDesc.Digest); err != nil {
		t.Fatalf("config not in skopeo's copy: %v", err)
	}
}

func upload(t *testing.T, d *fs.Driver, repo, mediaType string, content []byte) ocispec.Descriptor {
	t.Helper()
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(content), Size: int64(len(content))}
	if err := d.Put(context.Background(), repo, desc.Digest, content); err != nil {
		t.Fatal(err)
	}
	return desc
}
