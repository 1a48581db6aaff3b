package harnessrunner

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// The Harness log service, as lite-engine's logstream/remote and livelog
// packages speak to it (at 21311ead): a stream is opened (POST /stream),
// written as JSON arrays of lines (PUT /stream), closed (DELETE /stream), and
// the whole log uploaded as JSON lines (POST /blob, or PUT to the link POST
// /blob/link/upload gives). Every call carries X-Harness-Token.

// Line is one log line as the log service stores it.
type Line struct {
	Level     string            `json:"level"`
	Number    int               `json:"pos"`
	Message   string            `json:"out"`
	Timestamp time.Time         `json:"time"`
	Args      map[string]string `json:"args"`
}

// Log service limits, lite-engine's: a line is cut at 70 KiB and the
// uploaded history keeps the last 5 MiB.
const (
	maxLineBytes    = 70 << 10
	maxHistoryBytes = 5 << 20
)

// logService is a client of one account's log service.
type logService struct {
	cfg    LogConfig
	client *http.Client
}

func newLogService(cfg LogConfig, mtls MtlsConfig) (*logService, error) {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	if mtls.ClientCert != "" || mtls.ClientCertKey != "" {
		cert, err := decodeB64(mtls.ClientCert)
		if err != nil {
			return nil, fmt.Errorf("mtls_config.client_cert: %w", err)
		}
		key, err := decodeB64(mtls.ClientCertKey)
		if err != nil {
			return nil, fmt.Errorf("mtls_config.client_cert_key: %w", err)
		}
		pair, err := tls.X509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("mtls_config: %w", err)
		}
		transport.TLSClientConfig = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	}
	return &logService{cfg: cfg, client: &http.Client{Transport: transport, Timeout: 30 * time.Second}}, nil
}

func decodeB64(s string) ([]byte, error) { return base64.StdEncoding.DecodeString(s) }

func (l *logService) endpoint(route, key string) string {
	q := url.Values{"accountID": {l.cfg.AccountID}, "key": {key}}
	return strings.TrimSuffix(l.cfg.URL, "/") + route + "?" + q.Encode()
}

func (l *logService) call(ctx context.Context, method, target string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, target, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("X-Harness-Token", l.cfg.Token)
	resp, err := l.client.Do(req)
	if err != nil {
		return fmt.Errorf("log service: %w", err) // the token is in a header, not in the URL the error quotes
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode > 299 {
		return fmt.Errorf("log service: %s %s: %d %s", method, req.URL.Path, resp.StatusCode, bytes.TrimSpace(data))
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

func (l *logService) open(ctx context.Context, key string) error {
	return l.call(ctx, http.MethodPost, l.endpoint("/stream", key), nil, nil)
}

func (l *logService) write(ctx context.Context, key string, lines []Line) error {
	body, err := json.Marshal(lines)
	if err != nil {
		return err
	}
	return l.call(ctx, http.MethodPut, l.endpoint("/stream", key), body, nil)
}

func (l *logService) close(ctx context.Context, key string) error {
	return l.call(ctx, http.MethodDelete, l.endpoint("/stream", key), nil, nil)
}

func (l *logService) upload(ctx context.Context, key string, lines []Line) error {
	var body bytes.Buffer
	enc := json.NewEncoder(&body)
	for i := range lines {
		if err := enc.Encode(&lines[i]); err != nil {
			return err
		}
	}
	if l.cfg.IndirectUpload {
		return l.call(ctx, http.MethodPost, l.endpoint("/blob", key), body.Bytes(), nil)
	}
	var link struct {
		Value string `json:"link"`
	}
	if err := l.call(ctx, http.MethodPost, l.endpoint("/blob/link/upload", key), nil, &link); err != nil {
		return err
	}
	if link.Value == "" {
		return fmt.Errorf("log service: no upload link for %s", key)
	}
	return l.call(ctx, http.MethodPut, link.Value, body.Bytes(), nil)
}

// liveLog turns a step's log bytes into the log service's lines: streamed as
// they come, the history (its last 5 MiB) uploaded at the end.
type liveLog struct {
	svc     *logService
	key     string
	now     func() time.Time
	partial []byte
	history []Line
	size    int
	next    int
}

// add cuts data into lines (the last one may wait for its end) and streams
// the complete ones.
func (l *liveLog) add(ctx context.Context, data []byte) error {
	l.partial = append(l.partial, data...)
	var lines []Line
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		lines = append(lines, l.line(l.partial[:i+1]))
		l.partial = l.partial[i+1:]
	}
	return l.send(ctx, lines)
}

func (l *liveLog) line(b []byte) Line {
	msg := string(b)
	if l.svc.cfg.TrimNewLineSuffix {
		msg = strings.TrimSuffix(msg, "\n")
	}
	if len(msg) > maxLineBytes {
		msg = msg[:maxLineBytes]
	}
	line := Line{Level: "info", Number: l.next, Message: msg, Timestamp: l.now()}
	l.next++
	l.history = append(l.history, line)
	l.size += len(msg)
	for l.size > maxHistoryBytes && len(l.history) > 1 {
		l.size -= len(l.history[0].Message)
		l.history = l.history[1:]
	}
	return line
}

func (l *liveLog) send(ctx context.Context, lines []Line) error {
	if len(lines) == 0 {
		return nil
	}
	return l.svc.write(ctx, l.key, lines)
}

// finish streams what is left, then uploads the history and closes the
// stream (lite-engine's order).
func (l *liveLog) finish(ctx context.Context, extra ...string) error {
	var lines []Line
	if len(l.partial) > 0 {
		lines = append(lines, l.line(l.partial))
		l.partial = nil
	}
	for _, e := range extra {
		lines = append(lines, l.line([]byte(e+"\n")))
	}
	err := l.send(ctx, lines)
	if uerr := l.svc.upload(ctx, l.key, l.history); err == nil {
		err = uerr
	}
	if !l.svc.cfg.SkipClosingStream {
		if cerr := l.svc.close(ctx, l.key); err == nil {
			err = cerr
		}
	}
	return err
}
