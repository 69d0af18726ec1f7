package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/opencontainers/go-digest"

	"github.com/berthreg/berth/pkg/storage"
)

// Append copies r into the session through one part buffer. The buffer's
// first tailSize bytes are kept for the tail objects, which are read back
// only when the buffer fills; then it is uploaded as a part. At the end the
// bytes left are stored as a new tail object (or, past maxTailSegments,
// one object with the whole tail). State is persisted after every part and
// at the end, so whatever r yielded before failing stays in the session.
//
// ctx bounds reading r; the writes of bytes already read run on, each
// under finishTimeout, so that a client hanging up keeps its progress.
func (u *upload) Append(ctx context.Context, r io.Reader) (int64, error) {
	if err := u.usable(); err != nil {
		return 0, err
	}
	buf, put := u.buffer()
	defer put()
	p := len(buf)
	t := int(u.st.tailSize())
	fill := t // buf[t:fill] holds bytes read and not yet stored
	var n int64
	var rerr error
	for rerr == nil {
		if rerr = ctx.Err(); rerr != nil {
			break
		}
		var m int
		m, rerr = r.Read(buf[fill:])
		u.h.Write(buf[fill : fill+m])
		fill += m
		if fill == p {
			if err := u.storePart(ctx, buf, t); err != nil {
				return n, u.appendErr(errors.Join(rerr, err))
			}
			n += int64(p - t)
			t, fill = 0, 0
		}
	}
	if rerr == io.EOF {
		rerr = nil
	}
	if fill > t {
		if err := u.storeTail(ctx, buf, t, fill); err != nil {
			return n, u.appendErr(errors.Join(rerr, err))
		}
		n += int64(fill - t)
	}
	if rerr != nil {
		return n, fmt.Errorf("s3: upload %s: append: %w", u.id, rerr)
	}
	return n, nil
}

// appendErr restores the hash to the persisted bytes after a failed store.
func (u *upload) appendErr(err error) error {
	if rerr := u.rollback(); rerr != nil {
		u.lost = fmt.Errorf("s3: upload %s: hash state: %w", u.id, rerr)
	}
	return fmt.Errorf("s3: upload %s: append: %w", u.id, err)
}

// buffer returns a part buffer of the session's part size, and its release.
func (u *upload) buffer() ([]byte, func()) {
	if u.st.PartSize == u.d.partSize {
		b := u.d.getBuf()
		return *b, func() { u.d.bufs.Put(b) }
	}
	return make([]byte, u.st.PartSize), func() {} // started with another part size
}

// detached is ctx without its cancellation, for writes that must finish.
func detached(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
}

// storePart reads the tail into buf[:t], uploads buf as the next part and
// persists the state. buf[t:] holds new bytes, already hashed.
func (u *upload) storePart(ctx context.Context, buf []byte, t int) error {
	ctx, cancel := detached(ctx)
	defer cancel()
	if len(u.st.Parts) == maxParts {
		return fmt.Errorf("blob larger than %d parts of %d bytes", maxParts, len(buf))
	}
	if err := u.loadTail(ctx, buf[:t]); err != nil {
		return err
	}
	next, old := u.st.clone(), u.st.Tail
	if next.UploadID == "" {
		key := u.d.sessionKey(u.id, dataFile)
		out, err := u.d.c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{
			Bucket: &u.d.bucket, Key: &key, ContentType: aws.String(blobType),
		})
		if err != nil {
			return u.d.fail(ctx, "create multipart upload", err)
		}
		next.UploadID = aws.ToString(out.UploadId)
	}
	etag, err := u.uploadPart(ctx, next.UploadID, len(next.Parts)+1, buf)
	if err == nil {
		next.Parts = append(next.Parts, etag)
		next.Tail = nil
		next.Size += int64(len(buf) - t)
		err = u.persist(ctx, next)
	}
	if err != nil {
		if u.st.UploadID == "" {
			u.d.abort(u.d.sessionKey(u.id, dataFile), next.UploadID) // ours alone
		}
		return err
	}
	u.deleteSegments(ctx, old)
	return nil
}

func (u *upload) uploadPart(ctx context.Context, uploadID string, n int, p []byte) (string, error) {
	key := u.d.sessionKey(u.id, dataFile)
	out, err := u.d.c.UploadPart(ctx, &s3.UploadPartInput{
		Bucket: &u.d.bucket, Key: &key, UploadId: &uploadID, PartNumber: aws.Int32(int32(n)),
		Body: bytes.NewReader(p), ContentLength: aws.Int64(int64(len(p))),
	})
	if err != nil {
		if isNoSuchUpload(err) {
			return "", fmt.Errorf("s3: upload %s: multipart upload is gone: %w", u.id, storage.ErrUploadUnknown)
		}
		return "", u.d.fail(ctx, fmt.Sprintf("upload %s: part %d", u.id, n), err)
	}
	return aws.ToString(out.ETag), nil
}

// storeTail stores buf[t:fill] as a new tail object and persists the
// state. Past maxTailSegments it reads the tail into buf[:t] and replaces
// it with one object of buf[:fill].
func (u *upload) storeTail(ctx context.Context, buf []byte, t, fill int) error {
	ctx, cancel := detached(ctx)
	defer cancel()
	next, old := u.st.clone(), []segment(nil)
	from := t
	if len(next.Tail) >= maxTailSegments {
		if err := u.loadTail(ctx, buf[:t]); err != nil {
			return err
		}
		from, old, next.Tail = 0, next.Tail, nil
	}
	seg := segment{Name: fmt.Sprintf("%s%06d-%s", tailPrefix, len(next.Parts), randHex(4)), Size: int64(fill - from)}
	key := u.d.sessionKey(u.id, seg.Name)
	_, err := u.d.c.PutObject(ctx, &s3.PutObjectInput{
		Bucket: &u.d.bucket, Key: &key, Body: bytes.NewReader(buf[from:fill]), ContentLength: aws.Int64(seg.Size),
	})
	if err != nil {
		return u.d.fail(ctx, "upload "+u.id+": write tail", err)
	}
	next.Tail = append(next.Tail, seg)
	next.Size += int64(fill - t)
	if err := u.persist(ctx, next); err != nil {
		u.deleteSegments(ctx, []segment{seg})
		return err
	}
	u.deleteSegments(ctx, old)
	return nil
}

// Commit verifies the session against dgst and writes the blob. A blob
// smaller than one part is read back into the part buffer, verified and
// written with one PutObject. A larger one is checked with the running
// SHA-256 before completing the multipart upload (SHA-512: by reading the
// completed data object back), then copied server side. The writes run
// under their own timeout, not torn by the client going away.
func (u *upload) Commit(ctx context.Context, dgst digest.Digest) (storage.BlobInfo, error) {
	if err := u.usable(); err != nil {
		return storage.BlobInfo{}, err
	}
	dst, err := u.d.blobKey(u.st.Repo, dgst)
	if err != nil {
		return storage.BlobInfo{}, err // ErrUnsupportedAlgo: the session goes on
	}
	wctx, cancel := detached(ctx)
	defer cancel()
	if u.st.UploadID == "" {
		err = u.commitSmall(wctx, dst, dgst)
	} else {
		err = u.commitParts(ctx, wctx, dst, dgst)
	}
	if err != nil && !errors.Is(err, storage.ErrDigestMismatch) {
		return storage.BlobInfo{}, err
	}
	info := storage.BlobInfo{Size: u.st.Size, ModTime: time.Now()}
	if eerr := u.end(wctx); eerr != nil {
		u.d.log.Warn().Err(eerr).Str("upload", u.id).Msg("failed to end upload session")
	}
	if err != nil {
		return storage.BlobInfo{}, err
	}
	return info, nil
}

func (u *upload) mismatch(got, want digest.Digest) error {
	return fmt.Errorf("s3: upload %s is %s, expected %s: %w", u.id, got, want, storage.ErrDigestMismatch)
}

func (u *upload) commitSmall(ctx context.Context, dst string, dgst digest.Digest) error {
	buf, put := u.buffer()
	defer put()
	content := buf[:u.st.Size]
	if err := u.loadTail(ctx, content); err != nil {
		return err
	}
	if got := dgst.Algorithm().FromBytes(content); got != dgst {
		return u.mismatch(got, dgst)
	}
	if err := u.d.ensureLayout(ctx, u.st.Repo); err != nil {
		return err
	}
	return u.d.putBlob(ctx, dst, content)
}

// commitParts completes the multipart upload onto the data key, verifies
// it and copies it to dst. rctx (the caller's) bounds reading the data back.
func (u *upload) commitParts(rctx, ctx context.Context, dst string, dgst digest.Digest) error {
	if dgst.Algorithm() == digest.SHA256 {
		if got := digest.NewDigest(digest.SHA256, u.h); got != dgst {
			return u.mismatch(got, dgst)
		}
	}
	data := u.d.sessionKey(u.id, dataFile)
	err := u.complete(ctx, data)
	if errors.Is(err, storage.ErrUploadUnknown) {
		// Gone: completed by an earlier Commit that failed later on?
		head, herr := u.d.c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &u.d.bucket, Key: &data})
		if herr == nil && aws.ToInt64(head.ContentLength) == u.st.Size {
			err = nil
		}
	}
	if err != nil {
		return err
	}
	if dgst.Algorithm() != digest.SHA256 {
		if err := u.verify(rctx, data, dgst); err != nil {
			return err
		}
	}
	if err := u.d.ensureLayout(ctx, u.st.Repo); err != nil {
		return err
	}
	return u.d.copyObject(ctx, data, dst, u.st.Size)
}

// complete uploads the tail as the last part and completes the multipart
// upload onto key. ErrUploadUnknown: the multipart upload is gone.
func (u *upload) complete(ctx context.Context, key string) error {
	parts := make([]types.CompletedPart, len(u.st.Parts), len(u.st.Parts)+1)
	for i, etag := range u.st.Parts {
		parts[i] = types.CompletedPart{ETag: aws.String(etag), PartNumber: aws.Int32(int32(i + 1))}
	}
	if t := u.st.tailSize(); t > 0 {
		buf, put := u.buffer()
		defer put()
		if err := u.loadTail(ctx, buf[:t]); err != nil {
			return err
		}
		etag, err := u.uploadPart(ctx, u.st.UploadID, len(parts)+1, buf[:t])
		if err != nil {
			return err
		}
		parts = append(parts, types.CompletedPart{ETag: aws.String(etag), PartNumber: aws.Int32(int32(len(parts) + 1))})
	}
	_, err := u.d.c.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
		Bucket: &u.d.bucket, Key: &key, UploadId: &u.st.UploadID,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
	})
	switch {
	case isNoSuchUpload(err):
		return fmt.Errorf("s3: upload %s: multipart upload is gone: %w", u.id, storage.ErrUploadUnknown)
	case err != nil:
		return u.d.fail(ctx, "upload "+u.id+": complete multipart upload", err)
	}
	return nil
}

// verify reads the object key through a hash of dgst's algorithm.
func (u *upload) verify(ctx context.Context, key string, dgst digest.Digest) error {
	out, err := u.d.c.GetObject(ctx, &s3.GetObjectInput{Bucket: &u.d.bucket, Key: &key})
	if err != nil {
		return u.d.fail(ctx, "upload "+u.id+": read back", err)
	}
	defer out.Body.Close()
	h := dgst.Algorithm().Hash()
	if err := copyHash(h, out.Body, u.d); err != nil {
		return u.d.fail(ctx, "upload "+u.id+": read back", err)
	}
	if got := digest.NewDigest(dgst.Algorithm(), h); got != dgst {
		return u.mismatch(got, dgst)
	}
	return nil
}

func copyHash(h hash.Hash, r io.Reader, d *Driver) error {
	b := d.getBuf()
	defer d.bufs.Put(b)
	_, err := io.CopyBuffer(h, r, *b)
	return err
}

// Cancel ends the session: aborts its multipart upload and deletes its
// objects.
func (u *upload) Cancel(ctx context.Context) error {
	if err := u.usable(); err != nil {
		return err
	}
	ctx, cancel := detached(ctx)
	defer cancel()
	return u.end(ctx)
}

// Close releases the session for the next request.
func (u *upload) Close() error {
	if u.open {
		u.open = false
		u.d.release(u.id)
	}
	return nil
}

// end removes the session and releases it.
func (u *upload) end(ctx context.Context) error {
	defer u.Close()
	if err := u.d.endSession(ctx, u.id, u.st.UploadID); err != nil {
		return fmt.Errorf("s3: end upload %s: %w", u.id, err)
	}
	return nil
}

func (u *upload) usable() error {
	if !u.open {
		return u.closedErr()
	}
	return u.lost
}

func (u *upload) closedErr() error {
	return fmt.Errorf("s3: upload %s is closed: %w", u.id, storage.ErrUploadUnknown)
}
