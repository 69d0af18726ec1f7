package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/meta"
	"github.com/berthreg/berth/pkg/registry"
	"github.com/berthreg/berth/pkg/storage"
)

// apiError is an error answered with the spec's JSON error body.
type apiError struct {
	Status  int
	Code    errcode.ErrorCode
	Message string
	Detail  any
	Header  http.Header // extra response headers (Range on 416)
	cause   error
}

func (e *apiError) Error() string {
	if e.cause != nil {
		return e.Code.String() + ": " + e.cause.Error()
	}
	return e.Code.String() + ": " + e.Message
}

func (e *apiError) Unwrap() error { return e.cause }

// newError builds an apiError with the code's status and message.
func newError(code errcode.ErrorCode, message string) *apiError {
	d := code.Descriptor()
	if message == "" {
		message = d.Message
	}
	return &apiError{Status: d.HTTPStatusCode, Code: code, Message: message}
}

// errClientBody marks a request body that could not be read to its end.
var errClientBody = errors.New("request body broken off")

// errorTable maps sentinel errors to OCI codes. The first match wins.
var errorTable = []struct {
	err    error
	code   errcode.ErrorCode
	status int // 0: the code's own status
}{
	{registry.ErrNameInvalid, errcode.ErrorCodeNameInvalid, 0},
	{storage.ErrNameInvalid, errcode.ErrorCodeNameInvalid, 0},
	{registry.ErrTagInvalid, errcode.ErrorCodeTagInvalid, 0},
	{registry.ErrDigestInvalid, errcode.ErrorCodeDigestInvalid, 0},
	{storage.ErrUnsupportedAlgo, errcode.ErrorCodeDigestInvalid, 0},
	{storage.ErrDigestMismatch, errcode.ErrorCodeDigestInvalid, 0},
	{storage.ErrSizeMismatch, errcode.ErrorCodeSizeInvalid, 0},
	{errClientBody, errcode.ErrorCodeSizeInvalid, 0},
	{registry.ErrManifestTooLarge, errcode.ErrorCodeManifestInvalid, http.StatusRequestEntityTooLarge},
	{registry.ErrManifestInvalid, errcode.ErrorCodeManifestInvalid, 0},
	{registry.ErrManifestBlob, errcode.ErrorCodeManifestBlobUnknown, 0},
	{registry.ErrManifestUnknown, errcode.ErrorCodeManifestUnknown, 0},
	{registry.ErrNotAcceptable, errcode.ErrorCodeManifestUnknown, 0},
	{registry.ErrNameUnknown, errcode.ErrorCodeNameUnknown, 0},
	{storage.ErrBlobUnknown, errcode.ErrorCodeBlobUnknown, 0},
	{storage.ErrUploadUnknown, errcode.ErrorCodeBlobUploadUnknown, 0},
	{storage.ErrUploadBusy, errcode.ErrorCodeBlobUploadInvalid, http.StatusConflict},
	{meta.ErrNotFound, errcode.ErrorCodeNameUnknown, 0},
	{storage.ErrUnavailable, errcode.ErrorCodeUnavailable, 0},
}

// toAPIError converts any error to the response it deserves. Errors the
// table does not know become UNKNOWN (500) without leaking internals.
func toAPIError(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	for _, row := range errorTable {
		if errors.Is(err, row.err) {
			e := newError(row.code, err.Error())
			if row.status != 0 {
				e.Status = row.status
			}
			if e.Status == http.StatusServiceUnavailable {
				e.Header = http.Header{"Retry-After": {"5"}}
			}
			e.cause = err
			return e
		}
	}
	e := newError(errcode.ErrorCodeUnknown, "internal error")
	e.cause = err
	return e
}

// writeError answers err: headers, then status, then the JSON body.
func writeError(w http.ResponseWriter, r *http.Request, err error) {
	e := toAPIError(err)
	log := zerolog.Ctx(r.Context())
	ev, msg := log.Debug(), "request failed"
	switch {
	case abandoned(r, err):
		// The client hung up or half-closed (or the grace period of a
		// shutdown is over), and the work failed for that reason. A client
		// error is still answered as such (a half-closed client reads it);
		// a server error is the cancellation itself, logged and counted as
		// 499, not as a failure. Any other error is what it says, even if
		// nobody reads it: a detached commit can fail after the client left.
		ev, msg = log.Info(), "request abandoned by the client"
		if e.Status >= 500 {
			c := *e
			c.Status = statusClientClosed
			e = &c
		}
	case e.Status >= 500:
		ev = log.Error()
	}
	ev.Err(err).Str("code", e.Code.String()).Int("status", e.Status).Msg(msg)
	for k, v := range e.Header {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Type", "application/json")
	body, _ := json.Marshal(errcode.Errors{errcode.Error{Code: e.Code, Message: e.Message, Detail: e.Detail}})
	w.Header().Set("Content-Length", itoa(int64(len(body))))
	w.WriteHeader(e.Status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}

// abandoned reports whether err is the cancellation of a request whose
// client went away (or was cut at the end of a shutdown's grace period).
func abandoned(r *http.Request, err error) bool {
	return r.Context().Err() != nil && errors.Is(err, context.Canceled)
}
