package reports_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/slipway-ci/slipway/agent/agentapi"
	"github.com/slipway-ci/slipway/agent/mask"
	"github.com/slipway-ci/slipway/agent/reports"
)

// The fixtures follow what the real runners write: Maven Surefire 3
// (TEST-*.xml with properties, failure CDATA and system-out), Gradle (error
// elements, empty system-out/err), go-junit-report (testsuites), and
// dotnet test --logger trx (xUnit adapter: results, definitions, summary).
const ws = "testdata/ws"

func find(r *agentapi.TestReport, name string) *agentapi.TestFailure {
	for i := range r.Failures {
		if r.Failures[i].Name == name {
			return &r.Failures[i]
		}
	}
	return nil
}

func TestEachFormat(t *testing.T) {
	noMask := func(s string) string { return s }
	for _, tt := range []struct {
		glob                            string
		tests, failed, skipped          int
		failure, class, message, output string
	}{
		{"target/surefire-reports/TEST-*.xml", 3, 1, 1, "dividesByZero", "com.example.CalculatorTest",
			"expected: <Infinity> but was: <NaN>", "at com.example.CalculatorTest.dividesByZero(CalculatorTest.java:24)"},
		{"build/test-results/**/*.xml", 2, 1, 0, "readsConfig()", "org.example.LibraryTest",
			"java.io.FileNotFoundException: config.yml (No such file or directory)", "at org.example.Library.readConfig(Library.java:12)"},
		{"go/*.xml", 3, 1, 0, "TestTotal", "example.com/shop/cart", "Failed", "cart_test.go:31: total = 41, want 42"},
		{"**/*.trx", 3, 1, 1, "TotalsPrices", "Shop.Tests.CartTests",
			"Assert.Equal() Failure: Values differ\nExpected: 42\nActual:   41", "at Shop.Tests.CartTests.TotalsPrices() in /work/shop/tests/CartTests.cs:line 27\ncomputing the total"},
	} {
		t.Run(tt.glob, func(t *testing.T) {
			r := reports.Collect(ws, []string{tt.glob}, noMask)
			if r.Files != 1 || r.Tests != tt.tests || r.Failed != tt.failed || r.Skipped != tt.skipped || len(r.Notes) != 0 {
				t.Fatalf("report %+v", r)
			}
			f := find(r, tt.failure)
			if f == nil || f.Class != tt.class || f.Message != tt.message || !strings.Contains(f.Output, tt.output) {
				t.Fatalf("failure %s: %+v", tt.failure, f)
			}
		})
	}
	r := reports.Collect(ws, []string{"**/*.trx"}, noMask)
	if r.DurationMs != 1262 {
		t.Errorf("TRX durations: %d ms", r.DurationMs)
	}
}

// TestMaskedAndBounded: a secret in a test's output is masked; malformed
// files are notes, not failures; nothing matched says so.
func TestMaskedAndBounded(t *testing.T) {
	m := mask.New("s3cr3t-report-token")
	r := reports.Collect(ws, []string{"**/TEST-*.xml", "target/**/*.xml"}, m.MaskString)
	if r.Files != 2 || r.Tests != 5 {
		t.Fatalf("the files matched twice or not at all: %+v", r)
	}
	f := find(r, "dividesByZero")
	if f == nil || strings.Contains(f.Output, "s3cr3t") || !strings.Contains(f.Output, "******") {
		t.Fatalf("not masked: %+v", f)
	}
	notes := strings.Join(r.Notes, "\n")
	if !strings.Contains(notes, "broken/TEST-cut.xml: not a readable report") || !strings.Contains(notes, "broken/TEST-garbage.xml: not a readable report") {
		t.Errorf("notes %q", notes)
	}
	if r := reports.Collect(ws, []string{"nothing/*.xml"}, m.MaskString); r.Files != 0 || !strings.Contains(strings.Join(r.Notes, ""), "no file matches nothing/*.xml") {
		t.Errorf("no match: %+v", r)
	}
	if reports.Collect(ws, nil, m.MaskString) != nil {
		t.Error("a report without globs")
	}

	dir := t.TempDir()
	big := filepath.Join(dir, "TEST-huge.xml")
	if err := os.WriteFile(big, make([]byte, agentapi.MaxReportBytes+1), 0o600); err != nil {
		t.Fatal(err)
	}
	var many strings.Builder
	many.WriteString(`<testsuite name="many">`)
	for range agentapi.MaxReportFailures + 5 {
		many.WriteString(`<testcase name="x" classname="c"><failure message="m">` + strings.Repeat("line\n", 100) + `</failure></testcase>`)
	}
	many.WriteString(`</testsuite>`)
	if err := os.WriteFile(filepath.Join(dir, "TEST-many.xml"), []byte(many.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	r = reports.Collect(dir, []string{"*.xml"}, m.MaskString)
	notes = strings.Join(r.Notes, "\n")
	if r.Failed != agentapi.MaxReportFailures+5 || len(r.Failures) != agentapi.MaxReportFailures ||
		!strings.Contains(notes, "TEST-huge.xml: 20971521 bytes, over") || !strings.Contains(notes, "5 more failed tests left out") {
		t.Fatalf("bounds: failed %d, %d failures, notes %q", r.Failed, len(r.Failures), notes)
	}
	if lines := strings.Count(r.Failures[0].Output, "\n"); lines > 20 {
		t.Errorf("a failure's output has %d lines", lines)
	}
}

// TestTotalBytesBounded: past MaxReportsBytes in all, the rest is not read.
func TestTotalBytesBounded(t *testing.T) {
	dir := t.TempDir()
	for i := range 6 {
		f, err := os.Create(filepath.Join(dir, "TEST-"+string(rune('a'+i))+".xml"))
		if err != nil {
			t.Fatal(err)
		}
		// Sparse: 19 MiB each without writing them, and refused by the XML
		// reader at their first bytes (the test is of the bound, not of
		// parsing).
		if _, err := f.WriteString("<1"); err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(19 << 20); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	r := reports.Collect(dir, []string{"*.xml"}, func(s string) string { return s })
	notes := strings.Join(r.Notes, "\n")
	if !strings.Contains(notes, "TEST-f.xml: the reports read come to 99614720 bytes: this one not read") {
		t.Errorf("notes %q", notes)
	}
}

func TestReportGlobsValidated(t *testing.T) {
	for _, bad := range []string{"/etc/*.xml", "../up/*.xml", "a/[.xml"} {
		s := agentapi.Step{Script: "true", Reports: []string{bad}}
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "reports[0]") {
			t.Errorf("reports %q: %v", bad, err)
		}
	}
	s := agentapi.Step{Script: "true", Reports: []string{"**/TEST-*.xml", "**/*.trx"}}
	if err := s.Validate(); err != nil {
		t.Error(err)
	}
}
