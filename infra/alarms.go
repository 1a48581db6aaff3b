package main

import (
	"fmt"

	"github.com/aws/aws-cdk-go/awscdk/v2"
	"github.com/aws/aws-cdk-go/awscdk/v2/awscloudwatch"
	"github.com/aws/aws-cdk-go/awscdk/v2/awscloudwatchactions"
	"github.com/aws/aws-cdk-go/awscdk/v2/awssns"
	"github.com/aws/aws-cdk-go/awscdk/v2/awssnssubscriptions"
	"github.com/aws/jsii-runtime-go"

	"github.com/slipway-ci/slipway/internal/metrics"
	"github.com/slipway-ci/slipway/internal/pool"
	"github.com/slipway-ci/slipway/statemachine"
)

// poolMetric is one of the metrics the functions emit for a pool (EMF,
// namespace Slipway, dimensions Deployment and Pool).
func (s *Stack) poolMetric(pool, name, statistic string, period float64) awscloudwatch.Metric {
	return awscloudwatch.NewMetric(&awscloudwatch.MetricProps{
		Namespace:  jsii.String(metrics.Namespace),
		MetricName: jsii.String(name),
		DimensionsMap: &map[string]*string{
			metrics.DimDeployment: jsii.String(s.cfg.Deployment),
			metrics.DimPool:       jsii.String(pool),
		},
		Statistic: jsii.String(statistic),
		Period:    awscdk.Duration_Minutes(jsii.Number(period)),
	})
}

// alarm is one alarm to the topic.
type alarm struct {
	id, description string
	metric          awscloudwatch.IMetric
	threshold       float64
	periods         float64
	comparison      awscloudwatch.ComparisonOperator
	missing         awscloudwatch.TreatMissingData
}

// alarms are DESIGN section 7's, on the names, namespace and dimensions
// the functions emit, to an SNS topic; and the dashboard.
func (s *Stack) alarms() {
	topic := awssns.NewTopic(s.Stack, jsii.String("Alarms"), &awssns.TopicProps{
		TopicName: jsii.String(s.name("alarms")), EnforceSSL: jsii.Bool(true),
	})
	if s.cfg.AlarmEmail != "" {
		topic.AddSubscription(awssnssubscriptions.NewEmailSubscription(jsii.String(s.cfg.AlarmEmail), nil))
	}
	var all []alarm
	pools := s.cfg.pools()
	for _, p := range pools {
		name := p.Name
		all = append(all,
			alarm{
				id:          "IdleDeficit-" + name,
				description: fmt.Sprintf("pool %s stayed below its warm target for %d minutes", name, s.cfg.IdleDeficitMinutes),
				metric:      s.poolMetric(name, metrics.IdleDeficit, "Minimum", 1),
				threshold:   0, periods: float64(s.cfg.IdleDeficitMinutes),
				comparison: awscloudwatch.ComparisonOperator_GREATER_THAN_THRESHOLD,
				// No data is no refill: the pool is not being kept warm.
				missing: awscloudwatch.TreatMissingData_BREACHING,
			},
			alarm{
				id:          "PoolMetricsMissing-" + name,
				description: fmt.Sprintf("pool %s: no depth metrics for 5 minutes (the refill schedule or function is not running)", name),
				metric:      s.poolMetric(name, metrics.IdleVMs, "SampleCount", 1),
				threshold:   1, periods: 5,
				comparison: awscloudwatch.ComparisonOperator_LESS_THAN_THRESHOLD,
				missing:    awscloudwatch.TreatMissingData_BREACHING,
			},
			alarm{
				id:          "BootFailures-" + name,
				description: fmt.Sprintf("pool %s: VMs failed to boot within the boot budget", name),
				metric:      s.poolMetric(name, metrics.BootFailures, "Sum", 5),
				threshold:   0, periods: 1,
				comparison: awscloudwatch.ComparisonOperator_GREATER_THAN_THRESHOLD,
				missing:    awscloudwatch.TreatMissingData_NOT_BREACHING,
			},
			alarm{
				id:          "Orphans-" + name,
				description: fmt.Sprintf("pool %s: instances without a VM item were terminated (a leak was stopped)", name),
				metric:      s.poolMetric(name, metrics.OrphansTerminated, "Sum", 5),
				threshold:   0, periods: 1,
				comparison: awscloudwatch.ComparisonOperator_GREATER_THAN_THRESHOLD,
				missing:    awscloudwatch.TreatMissingData_NOT_BREACHING,
			},
			alarm{
				id:          "ReleaseFailures-" + name,
				description: fmt.Sprintf("pool %s: a release failed (the reaper retries it)", name),
				metric:      s.poolMetric(name, metrics.ReleaseFailures, "Sum", 5),
				threshold:   0, periods: 1,
				comparison: awscloudwatch.ComparisonOperator_GREATER_THAN_THRESHOLD,
				missing:    awscloudwatch.TreatMissingData_NOT_BREACHING,
			},
			alarm{
				id:          "LeaseWait-" + name,
				description: fmt.Sprintf("pool %s: p90 time from stage created to VM leased above %d ms for 15 minutes", name, s.cfg.LeaseWaitTargetMs),
				metric:      s.poolMetric(name, metrics.LeaseWaitMs, "p90", 5),
				threshold:   float64(s.cfg.LeaseWaitTargetMs), periods: 3,
				comparison: awscloudwatch.ComparisonOperator_GREATER_THAN_THRESHOLD,
				// No stages, no waits.
				missing: awscloudwatch.TreatMissingData_NOT_BREACHING,
			},
		)
	}
	for _, f := range statemachine.Functions {
		all = append(all, alarm{
			id: "FunctionErrors-" + f.Name, description: "the " + f.Name + " function failed",
			metric:    s.functions[f.Name].MetricErrors(&awscloudwatch.MetricOptions{Period: awscdk.Duration_Minutes(jsii.Number(5)), Statistic: jsii.String("Sum")}),
			threshold: 0, periods: 1,
			comparison: awscloudwatch.ComparisonOperator_GREATER_THAN_THRESHOLD, missing: awscloudwatch.TreatMissingData_NOT_BREACHING,
		})
	}
	// An execution fails only on an infrastructure fault: a failed build
	// is a succeeded execution (DESIGN section 2).
	opts := &awscloudwatch.MetricOptions{Period: awscdk.Duration_Minutes(jsii.Number(5)), Statistic: jsii.String("Sum")}
	all = append(all,
		alarm{
			id: "ExecutionsFailed", description: "a stage's execution failed: an infrastructure fault, not a build result",
			metric: s.stateMachine.MetricFailed(opts), threshold: 0, periods: 1,
			comparison: awscloudwatch.ComparisonOperator_GREATER_THAN_THRESHOLD, missing: awscloudwatch.TreatMissingData_NOT_BREACHING,
		},
		alarm{
			id: "ExecutionsTimedOut", description: "a stage's execution timed out",
			metric: s.stateMachine.MetricTimedOut(opts), threshold: 0, periods: 1,
			comparison: awscloudwatch.ComparisonOperator_GREATER_THAN_THRESHOLD, missing: awscloudwatch.TreatMissingData_NOT_BREACHING,
		},
	)
	action := awscloudwatchactions.NewSnsAction(topic)
	for _, a := range all {
		cw := awscloudwatch.NewAlarm(s.Stack, jsii.String("Alarm-"+a.id), &awscloudwatch.AlarmProps{
			AlarmName:          jsii.String(s.name(a.id)),
			AlarmDescription:   jsii.String("Slipway " + s.cfg.Deployment + ": " + a.description),
			Metric:             a.metric,
			Threshold:          jsii.Number(a.threshold),
			EvaluationPeriods:  jsii.Number(a.periods),
			ComparisonOperator: a.comparison,
			TreatMissingData:   a.missing,
		})
		cw.AddAlarmAction(action)
		cw.AddOkAction(action)
	}
	awscdk.NewCfnOutput(s.Stack, jsii.String("AlarmTopicArn"), &awscdk.CfnOutputProps{Value: topic.TopicArn()})
	s.dashboard(pools)
}

// dashboard shows, per pool, its depth, the lease wait and the warm-hit
// ratio.
func (s *Stack) dashboard(pools []pool.Pool) {
	d := awscloudwatch.NewDashboard(s.Stack, jsii.String("Dashboard"), &awscloudwatch.DashboardProps{
		DashboardName: jsii.String(s.name("pools")),
	})
	for _, p := range pools {
		name := p.Name
		depth := []awscloudwatch.IMetric{}
		for _, m := range []string{metrics.IdleVMs, metrics.ProvisioningVMs, metrics.LeasedVMs, metrics.Capacity, metrics.IdleDeficit} {
			depth = append(depth, s.poolMetric(name, m, "Average", 1))
		}
		wait := []awscloudwatch.IMetric{
			s.poolMetric(name, metrics.LeaseWaitMs, "p50", 5), s.poolMetric(name, metrics.LeaseWaitMs, "p90", 5),
		}
		ratio := awscloudwatch.NewMathExpression(&awscloudwatch.MathExpressionProps{
			Expression: jsii.String("100 * warm / (warm + cold)"),
			Label:      jsii.String("warm hits %"),
			UsingMetrics: &map[string]awscloudwatch.IMetric{
				"warm": s.poolMetric(name, metrics.WarmHit, "Sum", 5),
				"cold": s.poolMetric(name, metrics.ColdStart, "Sum", 5),
			},
			Period: awscdk.Duration_Minutes(jsii.Number(5)),
		})
		d.AddWidgets(
			awscloudwatch.NewGraphWidget(&awscloudwatch.GraphWidgetProps{Title: jsii.String(name + ": depth"), Left: &depth, Width: jsii.Number(8)}),
			awscloudwatch.NewGraphWidget(&awscloudwatch.GraphWidgetProps{Title: jsii.String(name + ": lease wait (ms)"), Left: &wait, Width: jsii.Number(8)}),
			awscloudwatch.NewGraphWidget(&awscloudwatch.GraphWidgetProps{
				Title: jsii.String(name + ": warm-hit ratio"), Left: &[]awscloudwatch.IMetric{ratio}, Width: jsii.Number(8),
				LeftYAxis: &awscloudwatch.YAxisProps{Min: jsii.Number(0), Max: jsii.Number(100)},
			}),
		)
	}
}
