// Package metrics writes CloudWatch metrics as Embedded Metric Format lines:
// JSON on a function's log output that CloudWatch turns into metrics, so no
// function ever calls the CloudWatch API (or waits on it).
package metrics

import (
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"
)

// Namespace of every Slipway metric.
const Namespace = "Slipway"

// Dimension names.
const (
	DimDeployment = "Deployment"
	DimPool       = "Pool"
	DimResult     = "Result"
)

// Metric names, per pool (DESIGN section 7). LeaseWaitMs, WarmHit, ColdStart,
// ReleaseFailures, StepOverheadMs and StageSeconds (also by Result) are the
// stage functions'.
const (
	IdleVMs           = "IdleVMs"
	ProvisioningVMs   = "ProvisioningVMs"
	LeasedVMs         = "LeasedVMs"
	Capacity          = "Capacity"
	IdleDeficit       = "IdleDeficit" // warm target − idle: alarms follow the schedule windows
	LeaseWaitMs       = "LeaseWaitMs"
	WarmHit           = "WarmHit"
	ColdStart         = "ColdStart"
	BootSeconds       = "BootSeconds"
	BootFailures      = "BootFailures"
	LaunchFailures    = "LaunchFailures"
	VMsLaunched       = "VMsLaunched"
	VMsRetired        = "VMsRetired"
	LeasesExpired     = "LeasesExpired"
	OrphansTerminated = "OrphansTerminated"
	GhostsRemoved     = "GhostsRemoved"
	ReleaseFailures   = "ReleaseFailures"
	StepOverheadMs    = "StepOverheadMs"
	StageSeconds      = "StageSeconds"
)

// Unit is a CloudWatch unit.
type Unit string

// Units used.
const (
	Count        Unit = "Count"
	Milliseconds Unit = "Milliseconds"
	Seconds      Unit = "Seconds"
)

// Metric is one value.
type Metric struct {
	Name  string
	Unit  Unit
	Value float64
}

// Emitter writes EMF lines for one deployment. It is safe for concurrent use:
// each line is written whole.
type Emitter struct {
	W          io.Writer
	Deployment string
	// Now is the clock (default time.Now).
	Now func() time.Time

	mu sync.Mutex
}

// maxMetricsPerLine is EMF's limit of metric definitions per directive.
const maxMetricsPerLine = 100

// Pool writes the metrics of one pool, dimensions Deployment and Pool, as
// one line (several beyond 100 metrics).
func (e *Emitter) Pool(pool string, ms ...Metric) error {
	return e.lines([][2]string{{DimPool, pool}}, ms)
}

// PoolBy writes metrics of one pool with one more dimension (dimensions
// Deployment, Pool and dim): StageSeconds by Result, say.
func (e *Emitter) PoolBy(pool, dim, value string, ms ...Metric) error {
	return e.lines([][2]string{{DimPool, pool}, {dim, value}}, ms)
}

func (e *Emitter) lines(dims [][2]string, ms []Metric) error {
	for len(ms) > 0 {
		n := min(len(ms), maxMetricsPerLine)
		if err := e.line(dims, ms[:n]); err != nil {
			return err
		}
		ms = ms[n:]
	}
	return nil
}

type metricDefinition struct {
	Name string `json:"Name"`
	Unit Unit   `json:"Unit,omitempty"`
}

type directive struct {
	Namespace  string             `json:"Namespace"`
	Dimensions [][]string         `json:"Dimensions"`
	Metrics    []metricDefinition `json:"Metrics"`
}

type metadata struct {
	Timestamp         int64       `json:"Timestamp"`
	CloudWatchMetrics []directive `json:"CloudWatchMetrics"`
}

func (e *Emitter) line(dims [][2]string, ms []Metric) error {
	now := time.Now
	if e.Now != nil {
		now = e.Now
	}
	doc := map[string]any{DimDeployment: e.Deployment}
	set := []string{DimDeployment}
	for _, d := range dims {
		doc[d[0]] = d[1]
		set = append(set, d[0])
	}
	d := directive{Namespace: Namespace, Dimensions: [][]string{set}}
	for _, m := range ms {
		if _, clash := doc[m.Name]; clash || m.Name == "_aws" || m.Name == "" {
			return fmt.Errorf("metric name %q clashes with the document's keys", m.Name)
		}
		doc[m.Name] = m.Value
		d.Metrics = append(d.Metrics, metricDefinition{Name: m.Name, Unit: m.Unit})
	}
	doc["_aws"] = metadata{Timestamp: now().UnixMilli(), CloudWatchMetrics: []directive{d}}
	data, err := json.Marshal(doc)
	if err != nil {
		return fmt.Errorf("encode metrics: %w", err)
	}
	data = append(data, '\n')
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, err := e.W.Write(data); err != nil {
		return fmt.Errorf("write metrics: %w", err)
	}
	return nil
}
