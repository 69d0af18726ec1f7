package s3

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// fail wraps err from the S3 operation op: with ErrUnavailable when S3
// could not be reached or kept failing, unless ctx ended.
func (d *Driver) fail(ctx context.Context, op string, err error) error {
	if ctx.Err() == nil && unavailable(err) {
		return fmt.Errorf("s3: %s: %w: %w", op, ErrUnavailable, err)
	}
	return fmt.Errorf("s3: %s: %w", op, err)
}

// unavailable reports whether err means S3 is unreachable, throttling or
// failing, as opposed to refusing the request.
func unavailable(err error) bool {
	var (
		maxAttempts *retry.MaxAttemptsError
		quota       ratelimit.QuotaExceededError
		send        *smithyhttp.RequestSendError
	)
	if errors.As(err, &maxAttempts) || errors.As(err, &quota) || errors.As(err, &send) {
		return true
	}
	if s := httpStatus(err); s >= 500 || s == http.StatusTooManyRequests {
		return true
	}
	switch apiCode(err) {
	case "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
		"ServiceUnavailable", "InternalError", "RequestLimitExceeded":
		return true
	}
	return false
}

// apiCode is the S3 error code of err, or "".
func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

func httpStatus(err error) int {
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

// isNotFound reports a missing key (GetObject's NoSuchKey, HeadObject's
// bodiless 404). A missing bucket is not included.
func isNotFound(err error) bool {
	switch apiCode(err) {
	case "NoSuchKey", "NotFound":
		return true
	case "NoSuchBucket":
		return false
	}
	return err != nil && httpStatus(err) == http.StatusNotFound && apiCode(err) == ""
}

// isConflict reports a failed precondition (If-Match, If-None-Match) or a
// concurrent conditional write (409 ConditionalRequestConflict).
func isConflict(err error) bool {
	switch apiCode(err) {
	case "PreconditionFailed", "ConditionalRequestConflict":
		return true
	}
	s := httpStatus(err)
	return s == http.StatusPreconditionFailed
}

func isNoSuchUpload(err error) bool { return apiCode(err) == "NoSuchUpload" }
