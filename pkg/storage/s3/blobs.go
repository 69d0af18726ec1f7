package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/opencontainers/go-digest"

	"github.com/berthreg/berth/pkg/storage"
)

const blobType = "application/octet-stream"

// Stat returns the size of the blob dgst in repo, or ErrBlobUnknown.
func (d *Driver) Stat(ctx context.Context, repo string, dgst digest.Digest) (storage.BlobInfo, error) {
	key, err := d.blobKey(repo, dgst)
	if err != nil {
		return storage.BlobInfo{}, err
	}
	return d.stat(ctx, key, repo, dgst)
}

func (d *Driver) stat(ctx context.Context, key, repo string, dgst digest.Digest) (storage.BlobInfo, error) {
	out, err := d.c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &d.bucket, Key: &key})
	if err != nil {
		return storage.BlobInfo{}, d.blobErr(ctx, repo, dgst, err)
	}
	return storage.BlobInfo{Size: aws.ToInt64(out.ContentLength), ModTime: aws.ToTime(out.LastModified)}, nil
}

// Open returns a reader over the blob dgst of repo, or ErrBlobUnknown. The
// reader fetches ranges lazily: it opens the object at its offset on the
// first Read after a Seek, so ranged reads do not start at byte 0.
func (d *Driver) Open(ctx context.Context, repo string, dgst digest.Digest) (storage.BlobReader, error) {
	key, err := d.blobKey(repo, dgst)
	if err != nil {
		return nil, err
	}
	info, err := d.stat(ctx, key, repo, dgst)
	if err != nil {
		return nil, err
	}
	return &blobReader{ctx: ctx, d: d, key: key, info: info}, nil
}

// Put verifies content against dgst and stores it with one PutObject.
func (d *Driver) Put(ctx context.Context, repo string, dgst digest.Digest, content []byte) error {
	key, err := d.blobKey(repo, dgst)
	if err != nil {
		return err
	}
	if err := storage.VerifyContent(dgst, content); err != nil {
		return fmt.Errorf("s3: put %s: %w", repo, err)
	}
	if err := d.ensureLayout(ctx, repo); err != nil {
		return err
	}
	return d.putBlob(ctx, key, content)
}

func (d *Driver) putBlob(ctx context.Context, key string, content []byte) error {
	_, err := d.c.PutObject(ctx, &s3.PutObjectInput{
		Bucket: &d.bucket, Key: &key, Body: bytes.NewReader(content),
		ContentLength: aws.Int64(int64(len(content))), ContentType: aws.String(blobType),
	})
	if err != nil {
		return d.fail(ctx, "put "+key, err)
	}
	return nil
}

// Delete removes the blob dgst from repo, or returns ErrBlobUnknown.
func (d *Driver) Delete(ctx context.Context, repo string, dgst digest.Digest) error {
	key, err := d.blobKey(repo, dgst)
	if err != nil {
		return err
	}
	if _, err := d.stat(ctx, key, repo, dgst); err != nil {
		return err
	}
	if _, err := d.c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &d.bucket, Key: &key}); err != nil {
		return d.fail(ctx, "delete "+key, err)
	}
	return nil
}

// Mount copies the blob dgst of from into to, server side. It creates to's
// oci-layout but not its index.json.
func (d *Driver) Mount(ctx context.Context, from, to string, dgst digest.Digest) error {
	src, err := d.blobKey(from, dgst)
	if err != nil {
		return err
	}
	dst, err := d.blobKey(to, dgst)
	if err != nil {
		return err
	}
	info, err := d.stat(ctx, src, from, dgst)
	if err != nil || src == dst {
		return err
	}
	if err := d.ensureLayout(ctx, to); err != nil {
		return err
	}
	if err := d.copyObject(ctx, src, dst, info.Size); err != nil {
		if isNotFound(err) {
			return d.blobErr(ctx, from, dgst, err) // deleted meanwhile
		}
		return err
	}
	return nil
}

// copyObject copies src to dst server side: one CopyObject up to
// d.maxCopy (S3 allows 5 GiB), else a multipart copy.
func (d *Driver) copyObject(ctx context.Context, src, dst string, size int64) error {
	if size <= d.maxCopy {
		_, err := d.c.CopyObject(ctx, &s3.CopyObjectInput{
			Bucket: &d.bucket, Key: &dst, CopySource: aws.String(d.copySource(src)),
			ContentType: aws.String(blobType), MetadataDirective: types.MetadataDirectiveReplace,
		})
		if err != nil {
			return d.fail(ctx, "copy "+src+" to "+dst, err)
		}
		return nil
	}
	mp, err := d.c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{
		Bucket: &d.bucket, Key: &dst, ContentType: aws.String(blobType),
	})
	if err != nil {
		return d.fail(ctx, "copy "+src+": create multipart upload", err)
	}
	var parts []types.CompletedPart
	for off, n := int64(0), int32(1); off < size; off, n = off+d.copyPart, n+1 {
		end := min(off+d.copyPart, size) - 1
		out, err := d.c.UploadPartCopy(ctx, &s3.UploadPartCopyInput{
			Bucket: &d.bucket, Key: &dst, UploadId: mp.UploadId, PartNumber: aws.Int32(n),
			CopySource: aws.String(d.copySource(src)), CopySourceRange: aws.String(fmt.Sprintf("bytes=%d-%d", off, end)),
		})
		if err == nil && out.CopyPartResult == nil {
			err = errors.New("no copy part result")
		}
		if err != nil {
			d.abort(dst, aws.ToString(mp.UploadId))
			return d.fail(ctx, fmt.Sprintf("copy %s: part %d", src, n), err)
		}
		parts = append(parts, types.CompletedPart{ETag: out.CopyPartResult.ETag, PartNumber: aws.Int32(n)})
	}
	_, err = d.c.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
		Bucket: &d.bucket, Key: &dst, UploadId: mp.UploadId,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
	})
	if err != nil {
		d.abort(dst, aws.ToString(mp.UploadId))
		return d.fail(ctx, "copy "+src+": complete", err)
	}
	return nil
}

// copySource is the x-amz-copy-source of key: bucket/key, URL-encoded.
func (d *Driver) copySource(key string) string {
	elems := strings.Split(d.bucket+"/"+key, "/")
	for i, e := range elems {
		elems[i] = url.PathEscape(e)
	}
	return strings.Join(elems, "/")
}

// abort aborts a multipart upload, best effort, even when the caller's
// context has ended.
func (d *Driver) abort(key, uploadID string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := d.c.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &d.bucket, Key: &key, UploadId: &uploadID})
	if err != nil && !isNoSuchUpload(err) {
		d.log.Warn().Err(err).Str("key", key).Msg("failed to abort multipart upload")
	}
}

// RedirectURL returns a presigned GET URL of the blob dgst of repo, valid
// for expires. It does not check that the blob exists. When Config.Redirect
// is off it returns an error wrapping errors.ErrUnsupported.
func (d *Driver) RedirectURL(ctx context.Context, repo string, dgst digest.Digest, expires time.Duration) (string, error) {
	if !d.redirect {
		return "", fmt.Errorf("s3: redirects are disabled: %w", errors.ErrUnsupported)
	}
	key, err := d.blobKey(repo, dgst)
	if err != nil {
		return "", err
	}
	req, err := d.presign.PresignGetObject(ctx, &s3.GetObjectInput{Bucket: &d.bucket, Key: &key},
		s3.WithPresignExpires(expires))
	if err != nil {
		return "", d.fail(ctx, "presign "+key, err)
	}
	return req.URL, nil
}

func (d *Driver) blobErr(ctx context.Context, repo string, dgst digest.Digest, err error) error {
	if isNotFound(err) {
		return fmt.Errorf("s3: %s in %s: %w", dgst, repo, storage.ErrBlobUnknown)
	}
	return d.fail(ctx, fmt.Sprintf("%s in %s", dgst, repo), err)
}
