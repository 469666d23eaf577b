package s3

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"strings"

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
	"RequestTimeTooSkewed":         true,
}

// Error codes that say the store or the account is full. HTTP 507 says so
// too, whatever the code.
var fullCodes = map[string]bool{
	"InsufficientStorage":            true, // Versity S3 Gateway
	"QuotaExceeded":                  true, // Ceph RGW, Versity S3 Gateway
	"XMinioStorageFull":              true,
	"XMinioAdminBucketQuotaExceeded": true,
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
	if msg := t.linkProblem(err); msg != "" {
		e.kind, e.msg = shipper.ErrPermanent, msg
		return e
	}
	var resp minio.ErrorResponse
	if !errors.As(err, &resp) || resp.Code == "" {
		return e
	}
	switch code := resp.Code; {
	case fullCodes[code] || resp.StatusCode == http.StatusInsufficientStorage:
		e.kind, e.msg = shipper.ErrPermanent, fmt.Sprintf("the storage is full or over its quota: %s (%s, HTTP %d)", resp.Message, code, resp.StatusCode)
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

// linkProblem says what is wrong when the client and the endpoint do not
// speak the same protocol or the endpoint's certificate is refused: no
// retry fixes that. It returns "" for every other error.
func (t *Transport) linkProblem(err error) string {
	var resp minio.ErrorResponse
	msg := strings.ToLower(err.Error())
	if errors.As(err, &resp) {
		msg = strings.ToLower(resp.Message)
	}
	var silent *silentError
	if errors.As(err, &silent) {
		return silent.Error()
	}
	hostPort := strings.TrimPrefix(strings.TrimPrefix(t.endpoint, "https://"), "http://")
	switch {
	case strings.Contains(msg, "server gave http response to https client"):
		return fmt.Sprintf("the endpoint speaks http: use http://%s (in --s3-endpoint or AWS_ENDPOINT_URL) if plain http is what you mean", hostPort)
	case strings.Contains(msg, "http request to an https server"), strings.Contains(msg, "plain http request was sent to https port"):
		return fmt.Sprintf("the endpoint speaks https: use https://%s", hostPort)
	}
	var (
		verify    *tls.CertificateVerificationError
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
	)
	if errors.As(err, &verify) || errors.As(err, &unknownCA) || errors.As(err, &hostname) || errors.As(err, &invalid) {
		return fmt.Sprintf("the TLS certificate of %s is refused (%v); if it is signed by your own CA, point SSL_CERT_FILE at the CA's certificate", t.endpoint, err)
	}
	return ""
}

// explainHead replaces the guesses that a HEAD response (which has no
// body) forces on the client by the server's own error code, read from a
// one-byte GET: a 403 may be a wrong secret rather than AccessDenied, a 404
// a missing bucket or an unknown access key rather than a missing key, a
// 400 an https server asked in plain http. It costs a request only on
// those errors.
func (t *Transport) explainHead(ctx context.Context, key string, err error) error {
	var resp minio.ErrorResponse
	if !errors.As(err, &resp) || (resp.StatusCode != http.StatusForbidden && resp.StatusCode != http.StatusNotFound &&
		resp.StatusCode != http.StatusBadRequest) {
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
