package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/slipway-ci/slipway/internal/pool"
	"github.com/slipway-ci/slipway/internal/stage"
)

// Config is what a deployment is made of, from the CDK context (cdk.json,
// or -c key=value on the command line).
type Config struct {
	// Deployment names the deployment: the stack, its resources' names, the
	// metrics' Deployment dimension and the instances' slipway:deployment tag.
	Deployment string
	// Account and Region are the stack's explicit environment: nothing is
	// looked up at synth time.
	Account, Region string

	// Pools is the pools file's content, PoolsFile where it came from;
	// parsed, the pools it declares (the subnets and security group of
	// validationNetwork standing for the stack's).
	PoolsFile string
	Pools     []byte
	parsed    []pool.Pool

	// VPCID, when set, deploys into that VPC: SubnetIDs (private subnets,
	// one per availability zone in AvailabilityZones, routed by
	// RouteTableIDs) hold the functions and, unless a pool names its own,
	// the build VMs. Empty: the stack makes a VPC over two zones.
	VPCID             string
	SubnetIDs         []string
	AvailabilityZones []string
	RouteTableIDs     []string
	// NATGateways is the new VPC's; 0 makes a VPC without NAT, whose
	// functions reach AWS through interface endpoints.
	NATGateways int
	// InterfaceEndpoints adds the interface endpoints the functions need
	// (about $7 a month per zone each); implied by NATGateways 0.
	InterfaceEndpoints bool
	// GatewayEndpoints adds the free DynamoDB and S3 gateway endpoints;
	// off only for an existing VPC that already has them.
	GatewayEndpoints bool

	// AlarmEmail, when set, subscribes to the alarm topic.
	AlarmEmail string
	// LeaseWaitTargetMs is the time-to-ready objective: LeaseWaitMs p90
	// above it raises an alarm.
	LeaseWaitTargetMs int
	// IdleDeficitMinutes is how long a pool may stay below its warm
	// target before its alarm goes off.
	IdleDeficitMinutes int
	// LogRetentionDays keeps the functions', the state machine's and the
	// API's logs; StepLogDays the archived step logs in S3.
	LogRetentionDays int
	StepLogDays      int

	// APIPrincipals are the IAM principals (ARNs, * allowed) the delegate
	// API takes calls from, in its resource policy; empty: any of the
	// deployment's account that IAM allows (DelegatePolicy), none of another.
	APIPrincipals []string
	// Operators are the principals (ARN patterns) who see and act on every
	// stage: a platform team's role. Delegates see their own stages.
	Operators []string
	// MaxActiveStages is the most stages one principal may have active;
	// APIConcurrency the API function's reserved concurrency, its cap (0:
	// unreserved).
	MaxActiveStages int
	APIConcurrency  int
	// MaxStageTimeout and MaxIdleTimeout bound what a stage may ask for:
	// how long it runs, how long it waits (holding its VM) for its next
	// group.
	MaxStageTimeout, MaxIdleTimeout time.Duration

	// AssetRoot is the repository: bin/ holds the agents and bin/lambda
	// the functions (make build lambdas). `go run ./infra` runs at the
	// root; the tests run in infra/ and pass "..".
	AssetRoot string
}

// Context keys and their defaults; cdk.json sets the usual ones.
var contextDefaults = map[string]string{
	"deployment":         "slipway",
	"account":            "",
	"region":             "",
	"pools":              "infra/pools.example.yaml",
	"vpcId":              "",
	"subnetIds":          "",
	"availabilityZones":  "",
	"routeTableIds":      "",
	"natGateways":        "1",
	"interfaceEndpoints": "false",
	"gatewayEndpoints":   "true",
	"alarmEmail":         "",
	"leaseWaitTargetMs":  "30000",
	"idleDeficitMinutes": "15",
	"logRetentionDays":   "30",
	"stepLogDays":        "30",
	"apiPrincipals":      "",
	"operators":          "",
	"maxActiveStages":    "50",
	"apiConcurrency":     "200",
	"maxStageTimeout":    "48h",
	"maxIdleTimeout":     "2h",
}

var (
	deploymentPattern = regexp.MustCompile(`^[a-z][a-z0-9-]{0,19}$`)
	accountPattern    = regexp.MustCompile(`^[0-9]{12}$`)
	regionPattern     = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]$`)
	vpcPattern        = regexp.MustCompile(`^vpc-[0-9a-f]{8,17}$`)
	subnetPattern     = regexp.MustCompile(`^subnet-[0-9a-f]{8,17}$`)
	routeTablePattern = regexp.MustCompile(`^rtb-[0-9a-f]{8,17}$`)
	emailPattern      = regexp.MustCompile(`^[^@\s]+@[^@\s]+\.[^@\s]+$`)
	principalPattern  = regexp.MustCompile(`^arn:aws[a-z-]*:iam::[0-9]{12}:(root|(role|user)/[A-Za-z0-9+=,.@_/*-]+)$`)
)

// LoadConfig reads the configuration through get (the CDK context: a
// string, number, bool or list per key), resolving the pools file against
// root. Every problem is reported, each naming its context key.
func LoadConfig(get func(key string) any, root string) (*Config, error) {
	var errs []error
	str := func(key string) string {
		v := get(key)
		switch v := v.(type) {
		case nil:
			return contextDefaults[key]
		case string:
			return strings.TrimSpace(v)
		case bool:
			return strconv.FormatBool(v)
		case float64:
			return strconv.FormatFloat(v, 'f', -1, 64)
		case int:
			return strconv.Itoa(v)
		case []any:
			parts := make([]string, len(v))
			for i, p := range v {
				parts[i] = fmt.Sprint(p)
			}
			return strings.Join(parts, ",")
		default:
			data, _ := json.Marshal(v)
			errs = append(errs, fmt.Errorf("context %s: %s is not a string, number, boolean or list", key, data))
			return contextDefaults[key]
		}
	}
	list := func(key string, pattern *regexp.Regexp, what string) []string {
		var out []string
		for _, s := range strings.Split(str(key), ",") {
			if s = strings.TrimSpace(s); s == "" {
				continue
			}
			if pattern != nil && !pattern.MatchString(s) {
				errs = append(errs, fmt.Errorf("context %s: %q is not %s", key, s, what))
			}
			out = append(out, s)
		}
		return out
	}
	number := func(key string, lo, hi int) int {
		n, err := strconv.Atoi(str(key))
		if err != nil || n < lo || n > hi {
			errs = append(errs, fmt.Errorf("context %s: %q: want a whole number from %d to %d", key, str(key), lo, hi))
		}
		return n
	}
	boolean := func(key string) bool {
		b, err := strconv.ParseBool(str(key))
		if err != nil {
			errs = append(errs, fmt.Errorf("context %s: %q: want true or false", key, str(key)))
		}
		return b
	}
	duration := func(key string, lo, hi time.Duration) time.Duration {
		d, err := time.ParseDuration(str(key))
		if err != nil || d < lo || d > hi {
			errs = append(errs, fmt.Errorf("context %s: %q: want a duration from %s to %s", key, str(key), lo, hi))
		}
		return d
	}
	c := &Config{
		Deployment: str("deployment"), Account: str("account"), Region: str("region"),
		PoolsFile: str("pools"), VPCID: str("vpcId"),
		SubnetIDs:          list("subnetIds", subnetPattern, "a subnet id (subnet-...)"),
		AvailabilityZones:  list("availabilityZones", nil, ""),
		RouteTableIDs:      list("routeTableIds", routeTablePattern, "a route table id (rtb-...)"),
		NATGateways:        number("natGateways", 0, 3),
		InterfaceEndpoints: boolean("interfaceEndpoints"),
		GatewayEndpoints:   boolean("gatewayEndpoints"),
		AlarmEmail:         str("alarmEmail"),
		LeaseWaitTargetMs:  number("leaseWaitTargetMs", 1000, 3_600_000),
		IdleDeficitMinutes: number("idleDeficitMinutes", 1, 1440),
		LogRetentionDays:   number("logRetentionDays", 1, 3653),
		StepLogDays:        number("stepLogDays", 1, 3653),
		APIPrincipals:      list("apiPrincipals", principalPattern, "an IAM role or user ARN (arn:aws:iam::123456789012:role/name, * allowed)"),
		Operators:          list("operators", principalPattern, "an IAM role or user ARN (arn:aws:iam::123456789012:role/name, * allowed)"),
		MaxActiveStages:    number("maxActiveStages", 1, 100_000),
		APIConcurrency:     number("apiConcurrency", 0, 10_000),
		MaxStageTimeout:    duration("maxStageTimeout", time.Minute, stage.MaxStageTimeout),
		MaxIdleTimeout:     duration("maxIdleTimeout", stage.MinIdleTimeout, stage.MaxStageTimeout),
		AssetRoot:          root,
	}
	if _, ok := retentionDays[c.LogRetentionDays]; !ok {
		errs = append(errs, fmt.Errorf("context logRetentionDays: %d: want one of CloudWatch's: %s", c.LogRetentionDays, retentionChoices()))
	}
	if !deploymentPattern.MatchString(c.Deployment) {
		errs = append(errs, fmt.Errorf("context deployment: %q: want 1-20 lowercase letters, digits and '-', starting with a letter", c.Deployment))
	}
	if !accountPattern.MatchString(c.Account) {
		errs = append(errs, fmt.Errorf("context account: %q: want the 12-digit AWS account to deploy into (-c account=123456789012)", c.Account))
	}
	if !regionPattern.MatchString(c.Region) {
		errs = append(errs, fmt.Errorf("context region: %q: want a region such as eu-central-1 (-c region=...)", c.Region))
	}
	if c.AlarmEmail != "" && !emailPattern.MatchString(c.AlarmEmail) {
		errs = append(errs, fmt.Errorf("context alarmEmail: %q is not an e-mail address", c.AlarmEmail))
	}
	errs = append(errs, c.checkNetwork()...)
	if c.NATGateways == 0 && c.VPCID == "" {
		c.InterfaceEndpoints = true
	}
	path := c.PoolsFile
	if !filepath.IsAbs(path) {
		path = filepath.Join(root, path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		errs = append(errs, fmt.Errorf("context pools: %w", err))
	} else {
		c.Pools = data
		errs = append(errs, c.checkPools()...)
	}
	return c, errors.Join(errs...)
}

func retentionChoices() string {
	days := slices.Sorted(maps.Keys(retentionDays))
	s := make([]string, len(days))
	for i, d := range days {
		s[i] = strconv.Itoa(d)
	}
	return strings.Join(s, ", ")
}

func (c *Config) checkNetwork() []error {
	var errs []error
	if c.VPCID == "" {
		for key, v := range map[string][]string{"subnetIds": c.SubnetIDs, "availabilityZones": c.AvailabilityZones, "routeTableIds": c.RouteTableIDs} {
			if len(v) > 0 {
				errs = append(errs, fmt.Errorf("context %s: only with vpcId (the stack makes its own VPC without it)", key))
			}
		}
		return errs
	}
	if !vpcPattern.MatchString(c.VPCID) {
		errs = append(errs, fmt.Errorf("context vpcId: %q is not a VPC id (vpc-...)", c.VPCID))
	}
	if len(c.SubnetIDs) == 0 {
		errs = append(errs, errors.New("context subnetIds: give the VPC's private subnets, one per availability zone"))
	}
	if len(c.AvailabilityZones) != len(c.SubnetIDs) {
		errs = append(errs, fmt.Errorf("context availabilityZones: %d zones for %d subnets: give each subnet's zone, in order", len(c.AvailabilityZones), len(c.SubnetIDs)))
	}
	if c.GatewayEndpoints && len(c.RouteTableIDs) == 0 {
		errs = append(errs, errors.New("context routeTableIds: the gateway endpoints need the subnets' route tables (or set gatewayEndpoints=false if the VPC has them)"))
	}
	return errs
}

// validationNetwork stands for the network the functions complete each pool
// with at run time (the stack's subnets may not exist yet at synth time),
// so that the pools file is checked here exactly as the functions will.
var validationNetwork = pool.Network{Subnets: []string{"subnet-00000000000000000"}, SecurityGroups: []string{"sg-00000000000000000"}}

// checkPools checks the pools file as the functions will read it, and
// refuses what the stack cannot grant least privilege for.
func (c *Config) checkPools() []error {
	cfg, err := pool.ParseFor(c.Pools, validationNetwork)
	if err != nil {
		return []error{fmt.Errorf("context pools: %s: %w", c.PoolsFile, err)}
	}
	c.parsed = cfg.Pools
	var errs []error
	for _, p := range cfg.Pools {
		if p.IAMInstanceProfile != "" {
			errs = append(errs, fmt.Errorf("context pools: pool %s: iam_instance_profile: the stack gives every pool's VMs its own instance profile; "+
				"passing another role would need iam:PassRole on roles it does not know", p.Name))
		}
	}
	return errs
}

// pools is the parsed pools file (parsed and checked by LoadConfig).
func (c *Config) pools() []pool.Pool { return c.parsed }

// platforms are the agent binaries the pools need, "linux/arm64" and so on.
func (c *Config) platforms() []string {
	var out []string
	for _, p := range c.pools() {
		if pl := p.OS + "/" + p.Arch; !slices.Contains(out, pl) {
			out = append(out, pl)
		}
	}
	slices.Sort(out)
	return out
}
