package reports

import (
	"encoding/xml"
	"fmt"
	"strings"
	"time"

	"github.com/slipway-ci/slipway/agent/agentapi"
)

// trxRun is what a .NET TRX file (dotnet test --logger trx, schema
// TeamTest/2010) holds that a report needs.
type trxRun struct {
	XMLName xml.Name        `xml:"TestRun"`
	Results []trxResult     `xml:"Results>UnitTestResult"`
	Tests   []trxDefinition `xml:"TestDefinitions>UnitTest"`
}

type trxResult struct {
	TestID   string `xml:"testId,attr"`
	TestName string `xml:"testName,attr"`
	Duration string `xml:"duration,attr"`
	Outcome  string `xml:"outcome,attr"`
	StdOut   string `xml:"Output>StdOut"`
	StdErr   string `xml:"Output>StdErr"`
	Message  string `xml:"Output>ErrorInfo>Message"`
	Stack    string `xml:"Output>ErrorInfo>StackTrace"`
}

type trxDefinition struct {
	ID     string `xml:"id,attr"`
	Method struct {
		ClassName string `xml:"className,attr"`
		Name      string `xml:"name,attr"`
	} `xml:"TestMethod"`
}

func readTRX(data []byte, r *agentapi.TestReport) error {
	var run trxRun
	if err := xml.Unmarshal(data, &run); err != nil {
		return err
	}
	classes := map[string]string{}
	for _, d := range run.Tests {
		classes[d.ID] = d.Method.ClassName
	}
	for _, res := range run.Results {
		r.Tests++
		r.DurationMs += parseTRXDuration(res.Duration).Milliseconds()
		switch strings.ToLower(res.Outcome) {
		case "passed":
		case "failed", "error", "timeout", "aborted":
			r.Failed++
			class := classes[res.TestID]
			name := res.TestName
			if class != "" {
				name = strings.TrimPrefix(name, class+".")
			}
			r.Failures = append(r.Failures, agentapi.TestFailure{
				Name: name, Class: class, Message: agentapi.Truncate(strings.TrimSpace(res.Message), maxMessage),
				Output: firstLines(res.Stack, res.StdOut, res.StdErr),
			})
		case "notexecuted", "inconclusive", "skipped", "pending":
			r.Skipped++
		default:
			return fmt.Errorf("test %q: unknown outcome %q", res.TestName, res.Outcome)
		}
	}
	return nil
}

// parseTRXDuration reads TRX's "hh:mm:ss.fffffff".
func parseTRXDuration(s string) time.Duration {
	var h, m int
	var sec float64
	if _, err := fmt.Sscanf(s, "%d:%d:%f", &h, &m, &sec); err != nil {
		return 0
	}
	return time.Duration(h)*time.Hour + time.Duration(m)*time.Minute + time.Duration(sec*float64(time.Second))
}
