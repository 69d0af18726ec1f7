package s3

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/berthreg/berth/pkg/storage"
)

// blobReader reads a blob with ranged GetObjects, opened lazily: Seek only
// moves the offset and drops the open body; the next Read opens the object
// at the offset (Range: bytes=off-). http.ServeContent therefore serves a
// Range without reading from byte 0.
type blobReader struct {
	ctx  context.Context // forced by io.Reader: the context of Open
	d    *Driver
	key  string
	info storage.BlobInfo

	off  int64
	body io.ReadCloser // nil until a Read needs it
}

func (r *blobReader) Info() storage.BlobInfo { return r.info }

func (r *blobReader) Read(p []byte) (int, error) {
	if r.off >= r.info.Size {
		return 0, io.EOF
	}
	if r.body == nil {
		out, err := r.d.c.GetObject(r.ctx, &s3.GetObjectInput{
			Bucket: &r.d.bucket, Key: &r.key, Range: aws.String(fmt.Sprintf("bytes=%d-", r.off)),
		})
		if err != nil {
			if isNotFound(err) {
				return 0, fmt.Errorf("s3: read %s: %w", r.key, storage.ErrBlobUnknown)
			}
			return 0, r.d.fail(r.ctx, "read "+r.key, err)
		}
		r.body = out.Body
	}
	n, err := r.body.Read(p)
	r.off += int64(n)
	switch {
	case err == io.EOF:
		r.body.Close()
		r.body = nil
		if r.off < r.info.Size {
			err = fmt.Errorf("s3: read %s: object ended at %d of %d bytes: %w", r.key, r.off, r.info.Size, io.ErrUnexpectedEOF)
		} else if n > 0 {
			err = nil
		}
	case err != nil:
		err = fmt.Errorf("s3: read %s: %w", r.key, err)
	}
	return n, err
}

// Seek sets the offset for the next Read; it makes no request.
func (r *blobReader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.off
	case io.SeekEnd:
		offset += r.info.Size
	default:
		return r.off, errors.New("s3: seek: invalid whence")
	}
	if offset < 0 {
		return r.off, errors.New("s3: seek: negative offset")
	}
	if offset != r.off && r.body != nil {
		r.body.Close()
		r.body = nil
	}
	r.off = offset
	return offset, nil
}

func (r *blobReader) Close() error {
	if r.body == nil {
		return nil
	}
	err := r.body.Close()
	r.body = nil
	return err
}
