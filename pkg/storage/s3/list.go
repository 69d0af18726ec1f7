package s3

import (
	"context"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/opencontainers/go-digest"

	"github.com/berthreg/berth/pkg/storage"
)

var (
	_ storage.BlobLister   = (*Driver)(nil)
	_ storage.TimeResolver = (*Driver)(nil)
)

// TimeResolution is a second: S3 reports modification times in whole
// seconds.
func (d *Driver) TimeResolution() time.Duration { return time.Second }

// Blobs calls fn for every blob of repo: the keys under <repo>/blobs/.
func (d *Driver) Blobs(ctx context.Context, repo string, fn func(digest.Digest, storage.BlobInfo) error) error {
	if err := checkRepo(repo); err != nil {
		return err
	}
	prefix := d.key(repo, blobsDir) + "/"
	p := s3.NewListObjectsV2Paginator(d.c, &s3.ListObjectsV2Input{Bucket: &d.bucket, Prefix: aws.String(prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return d.fail(ctx, "list blobs of "+repo, err)
		}
		for _, o := range page.Contents {
			alg, enc, ok := strings.Cut(strings.TrimPrefix(aws.ToString(o.Key), prefix), "/")
			dgst := digest.NewDigestFromEncoded(digest.Algorithm(alg), enc)
			if !ok || strings.Contains(enc, "/") || storage.ValidateDigest(dgst) != nil {
				continue
			}
			if err := fn(dgst, storage.BlobInfo{Size: aws.ToInt64(o.Size), ModTime: aws.ToTime(o.LastModified)}); err != nil {
				return err
			}
		}
	}
	return nil
}
