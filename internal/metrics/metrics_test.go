package metrics

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// units CloudWatch accepts (the EMF specification's Unit enumeration).
var units = []string{
	"Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes",
	"Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count", "Bytes/Second",
	"Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second", "Bits/Second",
	"Kilobits/Second", "Megabits/Second", "Gigabits/Second", "Terabits/Second", "Count/Second", "None",
}

// validateEMF checks one line against the Embedded Metric Format
// specification: the _aws metadata, its directives, and that every
// dimension and metric name refers to a root member of the right type.
func validateEMF(line []byte) error {
	var root map[string]any
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	if err := dec.Decode(&root); err != nil {
		return fmt.Errorf("not a JSON object: %w", err)
	}
	meta, ok := root["_aws"].(map[string]any)
	if !ok {
		return fmt.Errorf("no _aws metadata object")
	}
	ts, ok := meta["Timestamp"].(json.Number)
	if !ok {
		return fmt.Errorf("_aws.Timestamp is not a number")
	}
	if ms, err := ts.Int64(); err != nil || ms < 1e12 {
		return fmt.Errorf("_aws.Timestamp %v is not epoch milliseconds", ts)
	}
	directives, ok := meta["CloudWatchMetrics"].([]any)
	if !ok || len(directives) == 0 {
		return fmt.Errorf("_aws.CloudWatchMetrics is not a non-empty array")
	}
	for i, raw := range directives {
		d, ok := raw.(map[string]any)
		if !ok {
			return fmt.Errorf("directive %d is not an object", i)
		}
		ns, ok := d["Namespace"].(string)
		if !ok || strings.TrimSpace(ns) == "" || len(ns) > 1024 {
			return fmt.Errorf("directive %d: Namespace %v", i, d["Namespace"])
		}
		sets, ok := d["Dimensions"].([]any)
		if !ok {
			return fmt.Errorf("directive %d: Dimensions is not an array", i)
		}
		for _, rawSet := range sets {
			set, ok := rawSet.([]any)
			if !ok || len(set) > 30 {
				return fmt.Errorf("directive %d: a dimension set is not an array of at most 30", i)
			}
			for _, rawName := range set {
				name, _ := rawName.(string)
				v, ok := root[name].(string)
				if !ok || v == "" || len(v) > 1024 {
					return fmt.Errorf("dimension %q has no string member at the root", name)
				}
			}
		}
		defs, ok := d["Metrics"].([]any)
		if !ok || len(defs) > 100 {
			return fmt.Errorf("directive %d: Metrics is not an array of at most 100", i)
		}
		for _, rawDef := range defs {
			def, ok := rawDef.(map[string]any)
			if !ok {
				return fmt.Errorf("a metric definition is not an object")
			}
			name, _ := def["Name"].(string)
			if name == "" || len(name) > 1024 {
				return fmt.Errorf("metric name %q", name)
			}
			switch v := root[name].(type) {
			case json.Number:
			case []any:
				if len(v) > 100 {
					return fmt.Errorf("metric %s has over 100 values", name)
				}
			default:
				return fmt.Errorf("metric %s has no numeric member at the root (%T)", name, root[name])
			}
			if u, ok := def["Unit"]; ok && !slices.Contains(units, fmt.Sprint(u)) {
				return fmt.Errorf("metric %s: unit %v", name, u)
			}
		}
	}
	return nil
}

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
		if err := validateEMF(sc.Bytes()); err != nil {
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
		if err := validateEMF([]byte(bad)); err == nil {
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
		if err := validateEMF(sc.Bytes()); err != nil {
			t.Fatal(err)
		}
	}
}
