package s3

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/minio/minio-go/v7"

	"github.com/coldship/coldship/shipper"
)

// opError is a failed operation on one key: its message is written for a
// person, and it unwraps both to the sentinel callers branch on and to the
// client's error (for the request ID when debugging).
type opError struct {
	op, where, msg string
	kind           error // shipper.ErrNotFound, ErrPermanent, ErrAuth or nil
	err            error
}

func (e *opError) Error() string { return e.op + " " + e.where + ": " + e.msg }

func (e *opError) Unwrap() []error {
	if e.kind == nil {
		return []error{e.err}
	}
	return []error{e.kind, e.err}
}

// Error codes that retrying cannot fix. Codes not listed here (server
// errors, throttling, timeouts, digest mismatches of a corrupted transfer)
// are left for the retry wrapper.
var permanentCodes = map[string]bool{
	"AccessDenied":                 true,
	"AccountProblem":               true,
	"AllAccessDisabled":            true,
	"AuthorizationHeaderMalformed": true, // usually the wrong region
	"EntityTooLarge":               true,
	"EntityTooSmall":               true,
	"InvalidArgument":              true,
	"InvalidBucketName":            true,
	"InvalidBucketState":           true,
	"InvalidObjectState":           true,
	"InvalidPartOrder":             true,
	"InvalidRegion":                true,
	"InvalidRequest":               true,
	"InvalidStorageClass":          true,
	"KeyTooLongError":              true,
	"MalformedXML":                 true,
	"MethodNotAllowed":             true,
	"MissingContentLength":         true,
	"NoSuchBucket":                 true,
	"NotImplemented":               true,
	"PermanentRedirect":            true,
	"QuotaExceeded":                true,
	"RequestTimeTooSkewed":         true,
}

// Error codes that mean the credentials themselves were refused.
var authCodes = map[string]string{
	"InvalidAccessKeyId":    "the server does not know the access key ID; check AWS_ACCESS_KEY_ID or the AWS_PROFILE profile",
	"SignatureDoesNotMatch": "the secret access key does not match the access key ID; check AWS_SECRET_ACCESS_KEY or the AWS_PROFILE profile",
	"ExpiredToken":          "the session token has expired; renew AWS_SESSION_TOKEN or the profile's credentials",
	"InvalidToken":          "the session token is invalid; check AWS_SESSION_TOKEN",
	"TokenRefreshRequired":  "the session token must be refreshed",
	"InvalidSecurity":       "the security credentials were refused",
	"XAdminUserNotFound":    "the server does not know the access key ID; check AWS_ACCESS_KEY_ID or the AWS_PROFILE profile", // Versity S3 Gateway
}

// classify turns a client error into an opError wrapping the sentinel
// callers branch on. Errors without an S3 error code (network, context)
// stay unclassified: the retry wrapper decides.
func (t *Transport) classify(op, key string, err error) error {
	if err == nil {
		return nil
	}
	e := &opError{op: op, where: t.where(key), msg: err.Error(), err: err}
	var resp minio.ErrorResponse
	if !errors.As(err, &resp) || resp.Code == "" {
		return e
	}
	switch code := resp.Code; {
	case code == "NoSuchKey":
		e.kind, e.msg = shipper.ErrNotFound, "object not found"
	case code == "PreconditionFailed":
		// Only PutNew's If-None-Match: * asks for it.
		e.kind, e.msg = shipper.ErrObjectExists, "an object of that name exists"
	case code == "NoSuchBucket":
		e.kind, e.msg = shipper.ErrPermanent, fmt.Sprintf("bucket %q does not exist at %s", t.bucket, t.endpoint)
	case code == "AccessDenied":
		e.kind, e.msg = shipper.ErrPermanent, "access denied: "+resp.Message+" (check the bucket policy and the permissions of the credentials)"
	case authCodes[code] != "":
		e.kind, e.msg = shipper.ErrAuth, fmt.Sprintf("credentials refused (%s): %s", code, authCodes[code])
	case permanentCodes[code]:
		e.kind, e.msg = shipper.ErrPermanent, fmt.Sprintf("%s (%s)", resp.Message, code)
	default:
		e.msg = fmt.Sprintf("%s (%s, HTTP %d)", resp.Message, code, resp.StatusCode)
	}
	return e
}

// explainHead replaces the guesses that a HEAD response (which has no
// body) forces on the client by the server's own error code, read from a
// one-byte GET: a 403 may be a wrong secret rather than AccessDenied, a 404
// a missing bucket or an unknown access key rather than a missing key. It
// costs a request only on those errors.
func (t *Transport) explainHead(ctx context.Context, key string, err error) error {
	var resp minio.ErrorResponse
	if !errors.As(err, &resp) || (resp.StatusCode != http.StatusForbidden && resp.StatusCode != http.StatusNotFound) {
		return err
	}
	var opts minio.GetObjectOptions
	opts.SetRange(0, 0)
	body, _, _, gerr := t.core.GetObject(ctx, t.bucket, key, opts)
	if gerr == nil {
		body.Close()
		return err
	}
	var gresp minio.ErrorResponse
	if errors.As(gerr, &gresp) && gresp.Code != "" && gresp.Code != "InvalidRange" {
		return gerr
	}
	return err
}
