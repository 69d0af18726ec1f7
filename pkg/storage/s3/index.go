package s3

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/berthreg/berth/pkg/storage"
)

// Index returns repo's index.json and its version, the hex sha256 of the
// bytes; ErrRepoUnknown when there is none.
func (d *Driver) Index(ctx context.Context, repo string) ([]byte, string, error) {
	if err := checkRepo(repo); err != nil {
		return nil, "", err
	}
	data, _, err := d.getIndex(ctx, repo)
	if err != nil {
		return nil, "", err
	}
	if data == nil {
		return nil, "", fmt.Errorf("s3: %s: %w", repo, storage.ErrRepoUnknown)
	}
	return data, indexVersion(data), nil
}

// getIndex returns repo's index.json and its ETag; nil data when missing.
func (d *Driver) getIndex(ctx context.Context, repo string) ([]byte, string, error) {
	data, etag, err := d.readSmall(ctx, d.key(repo, indexFile))
	if err != nil {
		return nil, "", fmt.Errorf("s3: get index %s: %w", repo, err)
	}
	return data, etag, nil
}

// PutIndex replaces repo's index.json if its version is still expect (""
// for none), else returns ErrIndexConflict. The write is conditional on the
// ETag read (If-Match), or on absence (If-None-Match: *), so the check holds
// across processes.
func (d *Driver) PutIndex(ctx context.Context, repo string, data []byte, expect string) error {
	if err := checkRepo(repo); err != nil {
		return err
	}
	old, etag, err := d.getIndex(ctx, repo)
	if err != nil {
		return err
	}
	current := ""
	if old != nil {
		current = indexVersion(old)
	}
	if current != expect {
		return fmt.Errorf("s3: put index %s: index is at %q, expected %q: %w", repo, current, expect, storage.ErrIndexConflict)
	}
	if err := d.ensureLayout(ctx, repo); err != nil {
		return err
	}
	key := d.key(repo, indexFile)
	in := &s3.PutObjectInput{
		Bucket: &d.bucket, Key: &key, Body: bytes.NewReader(data),
		ContentLength: aws.Int64(int64(len(data))), ContentType: aws.String("application/json"),
	}
	if old == nil {
		in.IfNoneMatch = aws.String("*")
	} else {
		in.IfMatch = aws.String(etag)
	}
	_, err = d.c.PutObject(ctx, in)
	if isConflict(err) || isNotFound(err) { // NoSuchKey: deleted since read
		// A retried request can fail on its own first attempt's write.
		if now, _, rerr := d.getIndex(ctx, repo); rerr == nil && bytes.Equal(now, data) {
			return nil
		}
		return fmt.Errorf("s3: put index %s: changed concurrently: %w", repo, storage.ErrIndexConflict)
	}
	if err != nil {
		return d.fail(ctx, "put index "+repo, err)
	}
	return nil
}

func indexVersion(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// Repos calls fn for every repository with an index.json. It walks the key
// space level by level (ListObjectsV2 with delimiter "/"), skipping the
// driver's _ prefixes and the blobs/ of each repository, so blobs are
// never listed.
func (d *Driver) Repos(ctx context.Context, fn func(repo string) error) error {
	return d.walkRepos(ctx, "", fn)
}

func (d *Driver) walkRepos(ctx context.Context, repo string, fn func(string) error) error {
	dir := d.prefix
	if repo != "" {
		dir = d.key(repo) + "/"
	}
	var subdirs []string
	p := s3.NewListObjectsV2Paginator(d.c, &s3.ListObjectsV2Input{
		Bucket: &d.bucket, Prefix: aws.String(dir), Delimiter: aws.String("/"),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return d.fail(ctx, "list "+dir, err)
		}
		for _, o := range page.Contents {
			if repo != "" && aws.ToString(o.Key) == dir+indexFile {
				if err := fn(repo); err != nil {
					return err
				}
			}
		}
		for _, cp := range page.CommonPrefixes {
			name := strings.TrimSuffix(strings.TrimPrefix(aws.ToString(cp.Prefix), dir), "/")
			if validComponent(name, repo == "") {
				subdirs = append(subdirs, name)
			}
		}
	}
	for _, name := range subdirs {
		child := name
		if repo != "" {
			child = repo + "/" + name
		}
		if err := d.walkRepos(ctx, child, fn); err != nil {
			return err
		}
	}
	return nil
}
