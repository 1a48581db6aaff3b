package metrics

import (
	"bufio"
	"bytes"
	"fmt"
	"sync"
	"testing"
	"time"
)

func TestLinesFollowTheEMFSpecification(t *testing.T) {
	var buf bytes.Buffer
	e := &Emitter{W: &buf, Deployment: "prod", Now: func() time.Time { return time.UnixMilli(1_800_000_000_000) }}
	if err := e.Pool("linux", Metric{IdleVMs, Count, 3}, Metric{IdleDeficit, Count, -1}, Metric{LeaseWaitMs, Milliseconds, 12.5}); err != nil {
		t.Fatal(err)
	}
	var many []Metric
	for i := range 150 {
		many = append(many, Metric{Name: fmt.Sprintf("M%d", i), Unit: Count, Value: float64(i)})
	}
	if err := e.Pool("windows", many...); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(&buf)
	lines := 0
	for sc.Scan() {
		lines++
		if err := Validate(sc.Bytes()); err != nil {
			t.Errorf("line %d: %v\n%s", lines, err, sc.Text())
		}
	}
	if lines != 3 {
		t.Fatalf("%d lines, want 3 (150 metrics take two)", lines)
	}
}

func TestValidatorCatchesBadLines(t *testing.T) {
	for _, bad := range []string{
		`{}`,
		`{"_aws":{"Timestamp":"x","CloudWatchMetrics":[]}}`,
		`{"_aws":{"Timestamp":1800000000000,"CloudWatchMetrics":[{"Namespace":"S","Dimensions":[["Pool"]],"Metrics":[{"Name":"A"}]}]},"A":1}`,
		`{"_aws":{"Timestamp":1800000000000,"CloudWatchMetrics":[{"Namespace":"S","Dimensions":[],"Metrics":[{"Name":"A"}]}]},"A":"one"}`,
		`{"_aws":{"Timestamp":1800000000000,"CloudWatchMetrics":[{"Namespace":"S","Dimensions":[],"Metrics":[{"Name":"A","Unit":"Parsecs"}]}]},"A":1}`,
	} {
		if err := Validate([]byte(bad)); err == nil {
			t.Errorf("validator accepted %s", bad)
		}
	}
}

func TestNameClashesAreRefused(t *testing.T) {
	e := &Emitter{W: &bytes.Buffer{}, Deployment: "d"}
	for _, name := range []string{DimPool, DimDeployment, "_aws", ""} {
		if err := e.Pool("p", Metric{Name: name, Value: 1}); err == nil {
			t.Errorf("metric named %q accepted", name)
		}
	}
}

func TestConcurrentLinesStayWhole(t *testing.T) {
	var buf bytes.Buffer
	e := &Emitter{W: &buf, Deployment: "d"}
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() { _ = e.Pool(fmt.Sprint("p", i), Metric{BootFailures, Count, 1}) })
	}
	wg.Wait()
	sc := bufio.NewScanner(&buf)
	for sc.Scan() {
		if err := Validate(sc.Bytes()); err != nil {
			t.Fatal(err)
		}
	}
}
