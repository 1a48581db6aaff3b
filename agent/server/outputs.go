package server

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"

	"github.com/slipway-ci/slipway/agent/mask"
)

// maxOutputBytes bounds the outputs file a step may write.
const maxOutputBytes = 1 << 20

var outputNamePattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// readOutputs reads the file a step wrote to $SLIPWAY_OUTPUT. Each line is
// NAME=value; a multi-line value is written as
//
//	NAME<<DELIMITER
//	line one
//	line two
//	DELIMITER
//
// Values are masked like logs. When want is not empty only those names are
// returned. A missing file means no outputs.
func readOutputs(path string, m *mask.Matcher, want []string) (map[string]string, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read outputs: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxOutputBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read outputs: %w", err)
	}
	if len(data) > maxOutputBytes {
		return nil, fmt.Errorf("outputs file is over %d bytes", maxOutputBytes)
	}
	outputs, err := parseOutputs(data)
	if err != nil {
		return nil, err
	}
	for name, value := range outputs {
		if len(want) > 0 && !slices.Contains(want, name) {
			delete(outputs, name)
			continue
		}
		outputs[name] = m.MaskString(value)
	}
	if len(outputs) == 0 {
		return nil, nil
	}
	return outputs, nil
}

func parseOutputs(data []byte) (map[string]string, error) {
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), maxOutputBytes)
	lineNo := 0
	for sc.Scan() {
		lineNo++
		line := strings.TrimSuffix(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" {
			continue
		}
		if name, delim, ok := strings.Cut(line, "<<"); ok && !strings.Contains(name, "=") {
			if !outputNamePattern.MatchString(name) || delim == "" {
				return nil, fmt.Errorf("outputs line %d: bad heredoc %q", lineNo, line)
			}
			start := lineNo
			var value []string
			closed := false
			for sc.Scan() {
				lineNo++
				l := strings.TrimSuffix(sc.Text(), "\r")
				if l == delim {
					closed = true
					break
				}
				value = append(value, l)
			}
			if !closed {
				return nil, fmt.Errorf("outputs line %d: %s<<%s is never closed", start, name, delim)
			}
			out[name] = strings.Join(value, "\n")
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		if !ok || !outputNamePattern.MatchString(name) {
			return nil, fmt.Errorf("outputs line %d: want NAME=value or NAME<<DELIMITER, got %q", lineNo, line)
		}
		out[name] = value
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("outputs: %w", err)
	}
	return out, nil
}
