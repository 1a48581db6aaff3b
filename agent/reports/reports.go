// Package reports reads the test reports a step wrote: JUnit XML (Maven
// Surefire, Gradle, go-junit-report and the many tools that write it) with
// go-junit, and .NET's TRX with encoding/xml. A report that cannot be read
// becomes a note; it never fails the step.
package reports

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/bmatcuk/doublestar/v4"
	"github.com/joshdk/go-junit"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/agent/stepfile"
)

// Bounds of what one failure carries.
const (
	maxOutputLines = 20
	maxOutputBytes = 4 << 10
	maxMessage     = 1 << 10
)

// Collect reads the reports under workspace that the globs match. Every
// string of the result goes through mask, so no secret leaves in a test's
// output. It returns nil when no glob was given.
func Collect(workspace string, globs []string, mask func(string) string) *agentapi.TestReport {
	if len(globs) == 0 {
		return nil
	}
	r := &agentapi.TestReport{}
	// The workspace is the step's: a link in it leads nowhere outside it,
	// and a report that is not a regular file (a FIFO) is not waited on.
	root, err := os.OpenRoot(workspace)
	if err != nil {
		r.Notes = append(r.Notes, mask(err.Error()))
		return r
	}
	defer root.Close()
	files := match(root.FS(), globs, r)
	var total int64
	for _, rel := range files {
		data, err := readReport(root, rel, total)
		if err != nil {
			r.Notes = append(r.Notes, fmt.Sprintf("%s: %v", rel, err))
			continue
		}
		total += int64(len(data))
		if strings.EqualFold(filepath.Ext(rel), ".trx") {
			err = readTRX(data, r)
		} else {
			err = readJUnit(data, r)
		}
		if err != nil {
			r.Notes = append(r.Notes, fmt.Sprintf("%s: not a readable report: %v", rel, agentapi.Truncate(err.Error(), 200)))
			continue
		}
		r.Files++
	}
	if len(r.Failures) > agentapi.MaxReportFailures {
		r.Notes = append(r.Notes, fmt.Sprintf("%d more failed tests left out", len(r.Failures)-agentapi.MaxReportFailures))
		r.Failures = r.Failures[:agentapi.MaxReportFailures]
	}
	for i := range r.Failures {
		f := &r.Failures[i]
		f.Name, f.Class, f.Message, f.Output = mask(f.Name), mask(f.Class), mask(f.Message), mask(f.Output)
	}
	for i := range r.Notes {
		r.Notes[i] = mask(r.Notes[i])
	}
	return r
}

// match lists the files the globs match, each once, in order, at most
// MaxReportFiles.
// readReport reads one report, read is what the reports before it came to.
func readReport(root *os.Root, rel string, read int64) ([]byte, error) {
	f, err := stepfile.Open(root, filepath.FromSlash(rel))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	info, err := f.Stat()
	switch {
	case err != nil:
		return nil, err
	case info.Size() > agentapi.MaxReportBytes:
		return nil, fmt.Errorf("%d bytes, over %d: not read", info.Size(), agentapi.MaxReportBytes)
	case read+info.Size() > agentapi.MaxReportsBytes:
		return nil, fmt.Errorf("the reports read come to %d bytes: this one not read", read)
	}
	// It may grow as it is read (a background step still writes it).
	return io.ReadAll(io.LimitReader(f, agentapi.MaxReportBytes))
}

func match(root fs.FS, globs []string, r *agentapi.TestReport) []string {
	seen := map[string]bool{}
	var files []string
	for _, glob := range globs {
		matches, err := doublestar.Glob(root, glob, doublestar.WithFilesOnly(), doublestar.WithFailOnIOErrors())
		if err != nil {
			// Said, and the rest of the glob's matches still read: a link
			// out of the workspace must not cost a build its reports.
			r.Notes = append(r.Notes, fmt.Sprintf("reports %q: %v", glob, err))
			matches, _ = doublestar.Glob(root, glob, doublestar.WithFilesOnly())
		}
		for _, m := range matches {
			if !seen[m] {
				seen[m] = true
				files = append(files, m)
			}
		}
	}
	sort.Strings(files)
	if len(files) > agentapi.MaxReportFiles {
		r.Notes = append(r.Notes, fmt.Sprintf("%d report files, only the first %d read", len(files), agentapi.MaxReportFiles))
		files = files[:agentapi.MaxReportFiles]
	}
	if len(files) == 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("no file matches %s", strings.Join(globs, ", ")))
	}
	return files
}

func readJUnit(data []byte, r *agentapi.TestReport) error {
	suites, err := junit.Ingest(data)
	if err != nil {
		return err
	}
	if len(suites) == 0 {
		return fmt.Errorf("no <testsuite> in it")
	}
	var cases int64
	var walk func(s junit.Suite)
	walk = func(s junit.Suite) {
		for _, t := range s.Tests {
			r.Tests++
			cases += t.Duration.Milliseconds()
			switch t.Status {
			case junit.StatusSkipped:
				r.Skipped++
			case junit.StatusFailed, junit.StatusError:
				r.Failed++
				f := agentapi.TestFailure{Name: t.Name, Class: t.Classname, Message: agentapi.Truncate(t.Message, maxMessage)}
				var details []string
				if t.Error != nil {
					var e junit.Error
					if errors.As(t.Error, &e) {
						if f.Message == "" {
							f.Message = agentapi.Truncate(e.Message, maxMessage)
						}
						details = append(details, e.Body)
					} else {
						details = append(details, t.Error.Error())
					}
				}
				details = append(details, t.SystemOut, t.SystemErr)
				f.Output = firstLines(details...)
				r.Failures = append(r.Failures, f)
			}
		}
		for _, child := range s.Suites {
			walk(child)
		}
	}
	for _, s := range suites {
		walk(s)
	}
	// The suites' own time, where the file gives it: tests that ran in
	// parallel took less than their sum, and setup more.
	if ms, ok := suiteTime(data); ok {
		r.DurationMs += ms
	} else {
		r.DurationMs += cases
	}
	return nil
}

// suiteTime is the time="" (seconds) of a file's outermost element, a
// <testsuites> or a <testsuite>, or else the sum of its top-level
// <testsuite>s'; ok is false when they do not say.
func suiteTime(data []byte) (ms int64, ok bool) {
	dec := xml.NewDecoder(bytes.NewReader(data))
	depth, sum, suites := 0, 0.0, 0
	for {
		tok, err := dec.Token()
		if err != nil {
			break
		}
		switch el := tok.(type) {
		case xml.StartElement:
			depth++
			seconds, has := attrSeconds(el)
			switch {
			case depth == 1 && has:
				return int64(seconds * 1000), true
			case depth == 1 && el.Name.Local == "testsuite":
				return 0, false
			case depth == 2 && el.Name.Local == "testsuite":
				if !has {
					return 0, false
				}
				sum += seconds
				suites++
			}
		case xml.EndElement:
			depth--
		}
	}
	return int64(sum * 1000), suites > 0
}

func attrSeconds(el xml.StartElement) (float64, bool) {
	for _, a := range el.Attr {
		if a.Name.Local == "time" {
			s, err := strconv.ParseFloat(strings.ReplaceAll(a.Value, ",", ""), 64)
			return s, err == nil && s >= 0
		}
	}
	return 0, false
}

// firstLines joins the non-empty parts and keeps their first lines.
func firstLines(parts ...string) string {
	var kept []string
	lines := 0
	for _, p := range parts {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		for line := range strings.Lines(p) {
			if lines == maxOutputLines {
				return agentapi.Truncate(strings.Join(kept, "")+"…", maxOutputBytes)
			}
			kept = append(kept, strings.TrimRight(line, "\r\n")+"\n")
			lines++
		}
	}
	return agentapi.Truncate(strings.TrimSuffix(strings.Join(kept, ""), "\n"), maxOutputBytes)
}
