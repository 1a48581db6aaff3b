// Package logarchive keeps steps' masked logs after their VM is gone: in S3
// on AWS (stages/<stage>/steps/<step>.log), in a folder locally, behind one
// interface. A log is archived whole once its step has ended, byte for byte
// what the agent served, so a read at any offset gives the same bytes before
// and after the release.
package logarchive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"

	"github.com/slipway-ci/slipway/agent/agentapi"
)

// Errors of a read.
var (
	// ErrNotFound means the step's log was not archived.
	ErrNotFound = errors.New("the step's log is not archived")
	// ErrForbidden means the store refused the read. S3 answers so for a
	// key that does not exist too, unless the caller may s3:ListBucket:
	// the reader's role needs both that and s3:GetObject.
	ErrForbidden = errors.New("the log archive refused the read (the reader needs s3:GetObject and s3:ListBucket on the bucket)")
)

// Archive stores and reads step logs.
type Archive interface {
	// Put stores the step's whole log, replacing what was stored.
	Put(ctx context.Context, stageID, stepID string, log io.Reader) error
	// Read returns at most limit bytes of the log from offset (none at or
	// past its end) and the log's size.
	Read(ctx context.Context, stageID, stepID string, offset, limit int64) (data []byte, size int64, err error)
}

// Key is where a step's log lives in the archive.
func Key(stageID, stepID string) (string, error) {
	if err := errors.Join(agentapi.ValidateID("stage", stageID), agentapi.ValidateID("step", stepID)); err != nil {
		return "", fmt.Errorf("log archive: %w", err)
	}
	return "stages/" + stageID + "/steps/" + stepID + ".log", nil
}

// S3 is the archive in a bucket.
type S3 struct {
	Client *s3.Client
	Bucket string
}

// partSize keeps a streamed upload's memory small: two parts in flight.
const partSize = 5 << 20

func (a *S3) Put(ctx context.Context, stageID, stepID string, log io.Reader) error {
	key, err := Key(stageID, stepID)
	if err != nil {
		return err
	}
	up := transfermanager.New(a.Client, func(o *transfermanager.Options) {
		o.PartSizeBytes, o.Concurrency = partSize, 2
	})
	if _, err := up.UploadObject(ctx, &transfermanager.UploadObjectInput{
		Bucket: aws.String(a.Bucket), Key: aws.String(key), Body: log, ContentType: aws.String("text/plain; charset=utf-8"),
	}); err != nil {
		return fmt.Errorf("archive log %s: %w", key, err)
	}
	return nil
}

func (a *S3) Read(ctx context.Context, stageID, stepID string, offset, limit int64) ([]byte, int64, error) {
	key, err := Key(stageID, stepID)
	if err != nil {
		return nil, 0, err
	}
	if offset < 0 || limit <= 0 {
		return nil, 0, fmt.Errorf("read log %s: offset %d, limit %d", key, offset, limit)
	}
	out, err := a.Client.GetObject(ctx, &s3.GetObjectInput{
		Bucket: aws.String(a.Bucket), Key: aws.String(key), Range: aws.String(fmt.Sprintf("bytes=%d-%d", offset, offset+limit-1)),
	})
	var apiErr smithy.APIError
	switch {
	case errors.As(err, &apiErr) && (apiErr.ErrorCode() == "NoSuchKey" || apiErr.ErrorCode() == "NotFound"):
		return nil, 0, ErrNotFound
	case forbidden(err):
		return nil, 0, fmt.Errorf("read log %s: %w: %w", key, ErrForbidden, err)
	case errors.As(err, &apiErr) && apiErr.ErrorCode() == "InvalidRange":
		// At or past the end (S3 refuses the range): the size alone.
		head, err := a.Client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(a.Bucket), Key: aws.String(key)})
		if forbidden(err) {
			return nil, 0, fmt.Errorf("read log %s: %w: %w", key, ErrForbidden, err)
		}
		if err != nil {
			return nil, 0, fmt.Errorf("read log %s: %w", key, err)
		}
		return nil, aws.ToInt64(head.ContentLength), nil
	case err != nil:
		return nil, 0, fmt.Errorf("read log %s: %w", key, err)
	}
	defer out.Body.Close()
	data, err := io.ReadAll(io.LimitReader(out.Body, limit))
	if err != nil {
		return nil, 0, fmt.Errorf("read log %s: %w", key, err)
	}
	size, ok := rangeTotal(aws.ToString(out.ContentRange))
	if !ok {
		// No range in the answer: the whole object came.
		size = aws.ToInt64(out.ContentLength)
		if offset > 0 {
			return nil, 0, fmt.Errorf("read log %s: the store ignored the range", key)
		}
	}
	return data, size, nil
}

// forbidden tells S3's refusal: AccessDenied with a body, a bare 403 to a
// HEAD (which has none).
func forbidden(err error) bool {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode() == "AccessDenied" || apiErr.ErrorCode() == "Forbidden") {
		return true
	}
	var status interface{ HTTPStatusCode() int }
	return errors.As(err, &status) && status.HTTPStatusCode() == http.StatusForbidden
}

// rangeTotal reads the size from a Content-Range ("bytes 0-99/1234").
func rangeTotal(contentRange string) (int64, bool) {
	_, total, ok := strings.Cut(contentRange, "/")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(total, 10, 64)
	return n, err == nil
}

// Dir is the archive in a folder (slipway local).
type Dir struct{ Root string }

func (d *Dir) path(stageID, stepID string) (string, error) {
	key, err := Key(stageID, stepID)
	if err != nil {
		return "", err
	}
	return filepath.Join(d.Root, filepath.FromSlash(key)), nil
}

func (d *Dir) Put(_ context.Context, stageID, stepID string, log io.Reader) error {
	path, err := d.path(stageID, stepID)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	// Written aside and renamed, so a reader never sees half a log.
	tmp, err := os.CreateTemp(filepath.Dir(path), ".put-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, log); err != nil {
		tmp.Close()
		return fmt.Errorf("archive log %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func (d *Dir) Read(_ context.Context, stageID, stepID string, offset, limit int64) ([]byte, int64, error) {
	path, err := d.path(stageID, stepID)
	if err != nil {
		return nil, 0, err
	}
	if offset < 0 || limit <= 0 {
		return nil, 0, fmt.Errorf("read log %s: offset %d, limit %d", path, offset, limit)
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, 0, ErrNotFound
	}
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	if offset >= info.Size() {
		return nil, info.Size(), nil
	}
	data := make([]byte, min(limit, info.Size()-offset))
	n, err := f.ReadAt(data, offset)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, 0, err
	}
	return data[:n], info.Size(), nil
}
