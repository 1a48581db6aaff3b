package logarchive_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/slipway-ci/slipway/internal/logarchive"
)

func archives(t *testing.T) map[string]logarchive.Archive {
	return map[string]logarchive.Archive{
		"s3":  bucketAt(t, gofakes3.New(s3mem.New()).Server()),
		"dir": &logarchive.Dir{Root: t.TempDir()},
	}
}

// bucketAt is the archive in a bucket "logs" of the S3 that h serves.
func bucketAt(t *testing.T, h http.Handler) *logarchive.S3 {
	server := httptest.NewServer(h)
	t.Cleanup(server.Close)
	client := s3.New(s3.Options{
		Region: "us-east-1", BaseEndpoint: aws.String(server.URL), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider("test", "test", ""),
	})
	if _, err := client.CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: aws.String("logs")}); err != nil {
		t.Fatal(err)
	}
	return &logarchive.S3{Client: client, Bucket: "logs"}
}

// TestReadsGiveTheSameBytes: whatever the offset and limit, a read gives
// exactly the bytes of the log there, and its size; a big log goes up in
// parts.
func TestReadsGiveTheSameBytes(t *testing.T) {
	big := make([]byte, 12<<20+17)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range big {
		big[i] = byte('a' + r.IntN(26))
	}
	logs := map[string][]byte{"empty": {}, "small": []byte("hello\nworld\n"), "big": big}
	for name, a := range archives(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			for step, log := range logs {
				if err := a.Put(ctx, "st-1", step, bytes.NewReader(log)); err != nil {
					t.Fatalf("put %s: %v", step, err)
				}
			}
			for step, log := range logs {
				n := int64(len(log))
				for _, read := range []struct{ offset, limit int64 }{
					{0, 1 << 20}, {0, n + 10}, {3, 4}, {n / 2, 1 << 20}, {n - 1, 1}, {n, 10}, {n + 100, 10},
				} {
					if read.offset < 0 || read.limit <= 0 {
						continue
					}
					data, size, err := a.Read(ctx, "st-1", step, read.offset, read.limit)
					if err != nil {
						t.Fatalf("%s at %d+%d: %v", step, read.offset, read.limit, err)
					}
					want := []byte{}
					if read.offset < n {
						want = log[read.offset:min(n, read.offset+read.limit)]
					}
					if size != n || !bytes.Equal(data, want) {
						t.Fatalf("%s at %d+%d: %d bytes of %d, want %d of %d", step, read.offset, read.limit, len(data), size, len(want), n)
					}
				}
			}
			// A second Put replaces the log.
			if err := a.Put(ctx, "st-1", "small", bytes.NewReader([]byte("again"))); err != nil {
				t.Fatal(err)
			}
			if data, size, err := a.Read(ctx, "st-1", "small", 0, 100); err != nil || string(data) != "again" || size != 5 {
				t.Fatalf("after a second put: %q %d %v", data, size, err)
			}
			if _, _, err := a.Read(ctx, "st-1", "never", 0, 10); !errors.Is(err, logarchive.ErrNotFound) {
				t.Fatalf("a log never put: %v", err)
			}
			if err := a.Put(ctx, "../escape", "x", bytes.NewReader(nil)); err == nil {
				t.Fatal("a stage id with a path in it was taken")
			}
		})
	}
}

// awsLikeS3 answers as S3 does a caller without s3:ListBucket: a read of a
// key that does not exist is 403 AccessDenied (a HEAD a bare 403), not 404,
// so that the caller learns nothing of the bucket's keys. gofakes3 answers
// 404 whatever the caller may do.
func awsLikeS3(t *testing.T, mayList bool) *logarchive.S3 {
	backend := s3mem.New()
	fake := gofakes3.New(backend).Server()
	return bucketAt(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		bucket, key, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		if !mayList && key != "" && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
			if _, err := backend.HeadObject(bucket, key); err != nil {
				w.Header().Set("Content-Type", "application/xml")
				w.WriteHeader(http.StatusForbidden)
				if r.Method == http.MethodGet {
					_, _ = io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>`)
				}
				return
			}
		}
		fake.ServeHTTP(w, r)
	}))
}

// A log not archived is ErrNotFound only where S3 may say so (the reader
// may list the bucket: the deployment grants the API s3:ListBucket); where
// it may not, S3's 403 is ErrForbidden, never taken for a missing log or a
// store that did not answer.
func TestAMissingLogWithoutListBucketIsForbidden(t *testing.T) {
	ctx := context.Background()
	listing, notListing := awsLikeS3(t, true), awsLikeS3(t, false)
	if _, _, err := listing.Read(ctx, "st-1", "never", 0, 10); !errors.Is(err, logarchive.ErrNotFound) {
		t.Errorf("with s3:ListBucket, a log never put: %v, want ErrNotFound", err)
	}
	_, _, err := notListing.Read(ctx, "st-1", "never", 0, 10)
	if !errors.Is(err, logarchive.ErrForbidden) || errors.Is(err, logarchive.ErrNotFound) {
		t.Errorf("without s3:ListBucket, a log never put: %v, want ErrForbidden", err)
	}
	// A log that exists reads the same with or without, to its end (the
	// read past it asks for the size with a HEAD).
	for name, a := range map[string]*logarchive.S3{"listing": listing, "not listing": notListing} {
		if err := a.Put(ctx, "st-1", "built", strings.NewReader("hello\n")); err != nil {
			t.Fatal(err)
		}
		if data, size, err := a.Read(ctx, "st-1", "built", 0, 100); err != nil || string(data) != "hello\n" || size != 6 {
			t.Errorf("%s: %q %d %v", name, data, size, err)
		}
		if data, size, err := a.Read(ctx, "st-1", "built", 6, 100); err != nil || len(data) != 0 || size != 6 {
			t.Errorf("%s, at the end: %q %d %v", name, data, size, err)
		}
	}
}
