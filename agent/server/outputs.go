package server

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/agent/mask"
	"github.com/slipway-ci/slipway/agent/stepfile"
)

// maxOutputBytes bounds the outputs file a step may write.
const maxOutputBytes = 1 << 20

// readOutputs reads the file a step wrote to $SLIPWAY_OUTPUT. Each line is
// NAME=value; a multi-line value is written as
//
//	NAME<<DELIMITER
//	line one
//	line two
//	DELIMITER
//
// Values are masked like logs, but for the names in secret, whose raw
// values come apart in secrets (to be sealed). When want is not empty only
// those names, and secret's, are returned. A missing file means no outputs.
// Lines that are not outputs, and whatever is past maxOutputBytes, are left
// out and reported in the error; the good outputs are kept either way.
func readOutputs(path string, m *mask.Matcher, want, secret []string) (outputs, secrets map[string]string, err error) {
	data, cut, err := readBounded(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read outputs: %w", err)
	}
	var problems []error
	if cut {
		problems = append(problems, fmt.Errorf("the outputs file is over %d bytes: what follows byte %d is left out", maxOutputBytes, len(data)))
	}
	outputs, bad := parseOutputs(data)
	problems = append(bad, problems...)
	for name, value := range outputs {
		switch {
		case slices.Contains(secret, name):
			if secrets == nil {
				secrets = map[string]string{}
			}
			secrets[name] = value
			delete(outputs, name)
		case len(want) > 0 && !slices.Contains(want, name):
			delete(outputs, name)
		default:
			outputs[name] = m.MaskString(value)
		}
	}
	if len(outputs) == 0 {
		outputs = nil
	}
	return outputs, secrets, outputProblems(problems)
}

// readExports reads the file a step wrote to $SLIPWAY_ENV, in the outputs
// file's format (an optional "export " before a name is allowed, as Drone's
// and Harness's env files have it). The values are not masked: they become
// the environment of later steps.
func readExports(path string) (map[string]string, error) {
	data, cut, err := readBounded(path)
	switch {
	case err != nil:
		return nil, fmt.Errorf("read env file: %w", err)
	case cut:
		return nil, fmt.Errorf("the env file is over %d bytes: none of it is exported", maxOutputBytes)
	}
	lines := strings.Split(string(data), "\n")
	for i, line := range lines {
		lines[i] = strings.TrimPrefix(line, "export ")
	}
	exports, bad := parseOutputs([]byte(strings.Join(lines, "\n")))
	if err := outputProblems(bad); err != nil {
		return exports, fmt.Errorf("env file: %w", err)
	}
	return exports, nil
}

// readBounded reads at most maxOutputBytes of a file a step wrote, cut
// after its last whole line within them (cut says so); a missing file is
// empty. A step can write gigabytes: no more than the limit is ever read.
// What is not a regular file there (a link out of its folder, a FIFO) is
// refused (stepfile).
func readBounded(path string) (data []byte, cut bool, err error) {
	f, err := stepfile.OpenPath(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	if data, err = io.ReadAll(io.LimitReader(f, maxOutputBytes+1)); err != nil {
		return nil, false, err
	}
	if len(data) > maxOutputBytes {
		return data[:bytes.LastIndexByte(data[:maxOutputBytes], '\n')+1], true, nil
	}
	return data, false, nil
}

// maxOutputProblems is how many bad lines a step's status names.
const maxOutputProblems = 10

func outputProblems(problems []error) error {
	if len(problems) == 0 {
		return nil
	}
	msgs := []string{}
	for i, p := range problems {
		if i == maxOutputProblems {
			msgs = append(msgs, fmt.Sprintf("and %d more", len(problems)-i))
			break
		}
		msgs = append(msgs, p.Error())
	}
	return fmt.Errorf("outputs: %s", strings.Join(msgs, "; "))
}

// parseOutputs reads the outputs it can, and a problem for each line that
// is not one.
func parseOutputs(data []byte) (map[string]string, []error) {
	out := map[string]string{}
	var problems []error
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	for i := 0; i < len(lines); i++ {
		lineNo := i + 1
		line := strings.TrimSuffix(lines[i], "\r")
		if strings.TrimSpace(line) == "" {
			continue
		}
		if name, delim, ok := strings.Cut(line, "<<"); ok && !strings.Contains(name, "=") {
			if !agentapi.IsVarName(name) || delim == "" {
				problems = append(problems, fmt.Errorf("line %d: bad heredoc (want NAME<<DELIMITER)", lineNo))
				continue
			}
			end := -1
			for j := i + 1; j < len(lines); j++ {
				if strings.TrimSuffix(lines[j], "\r") == delim {
					end = j
					break
				}
			}
			if end < 0 {
				problems = append(problems, fmt.Errorf("line %d: the heredoc of %s is never closed", lineNo, name))
				continue // the lines after it may still be outputs
			}
			value := make([]string, 0, end-i-1)
			for _, l := range lines[i+1 : end] {
				value = append(value, strings.TrimSuffix(l, "\r"))
			}
			out[name] = strings.Join(value, "\n")
			i = end
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		if !ok || !agentapi.IsVarName(name) {
			problems = append(problems, fmt.Errorf("line %d: want NAME=value or NAME<<DELIMITER", lineNo))
			continue
		}
		out[name] = value
	}
	return out, problems
}
