package pool

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/robfig/cron/v3"
)

// problems collects the problems of one pool, each prefixed with the pool
// and the key.
type problems struct {
	pool string
	list []error
}

func (p *problems) add(key, format string, args ...any) {
	p.list = append(p.list, fmt.Errorf("pool %s: %s: %s", p.pool, key, fmt.Sprintf(format, args...)))
}

// checkList checks a list key: not empty, each entry of the pattern, no entry twice.
func (p *problems) checkList(entries []string, key string, pattern *regexp.Regexp, whenEmpty, what string) {
	if len(entries) == 0 {
		p.add(key, "%s", whenEmpty)
	}
	for _, e := range entries {
		if !pattern.MatchString(e) {
			p.add(key, "%q is not %s", e, what)
		}
	}
	if dup := duplicate(entries); dup != "" {
		p.add(key, "%q is listed twice", dup)
	}
}

func (c *Config) validate() []error {
	if len(c.Pools) == 0 {
		return []error{fmt.Errorf("pools: the file defines no pool")}
	}
	var all []error
	seen := map[string]bool{}
	for i := range c.Pools {
		p := &c.Pools[i]
		name := p.Name
		if name == "" {
			name = fmt.Sprintf("#%d", i+1)
		}
		pr := &problems{pool: name}
		if seen[p.Name] {
			pr.add("name", "%q is used by another pool too", p.Name)
		}
		seen[p.Name] = true
		p.validate(pr)
		all = append(all, pr.list...)
	}
	return all
}

// Check reports every problem of one pool, as Parse would. Pools built in
// code (not read from a file) are checked before anything is launched for
// them.
func (p *Pool) Check() error {
	pr := &problems{pool: p.Name}
	p.validate(pr)
	return errors.Join(pr.list...)
}

func (p *Pool) validate(pr *problems) {
	if !namePattern.MatchString(p.Name) {
		pr.add("name", "%q: want 1-40 lowercase letters, digits and '-'", p.Name)
	}
	switch p.OS {
	case "linux":
		if p.Arch != "amd64" && p.Arch != "arm64" {
			pr.add("arch", "%q: want amd64 or arm64", p.Arch)
		}
	case "windows":
		if p.Arch != "amd64" {
			pr.add("arch", "%q: Windows pools are amd64", p.Arch)
		}
	default:
		pr.add("os", "%q: want linux or windows", p.OS)
	}
	pr.checkList(p.InstanceTypes, "instance_types", instanceTypePattern,
		"give at least one instance type, such as c6i.large", "an instance type such as c6i.large")
	switch {
	case amiPattern.MatchString(p.AMI):
	case strings.HasPrefix(p.AMI, "resolve:ssm:") && ssmPathPattern.MatchString(strings.TrimPrefix(p.AMI, "resolve:ssm:")):
	case ssmPathPattern.MatchString(p.AMI):
	default:
		pr.add("ami", "%q: want an image id (ami-...) or an SSM parameter path (/aws/service/...)", p.AMI)
	}
	pr.checkList(p.Subnets, "subnets", subnetPattern,
		"give the subnets to launch in, one per availability zone", "a subnet id (subnet-...)")
	pr.checkList(p.SecurityGroups, "security_groups", securityGroup,
		"give the security group that admits the agent's port from the functions", "a security group id (sg-...)")
	if v := p.RootVolume.SizeGB; v != 0 && (v < minVolumeGB || v > maxVolumeGB) {
		pr.add("root_volume.size_gb", "%d: want %d to %d", v, minVolumeGB, maxVolumeGB)
	}
	if t := p.RootVolume.Type; t != "" && !slices.Contains(volumeTypes, t) {
		pr.add("root_volume.type", "%q: want one of %s", t, strings.Join(volumeTypes, ", "))
	}
	if p.MaxInstances < 1 || p.MaxInstances > maxInstancesPerPool {
		pr.add("max_instances", "%d: want 1 to %d", p.MaxInstances, maxInstancesPerPool)
	}
	if p.MinIdle < 0 || (p.MaxInstances > 0 && p.MinIdle > p.MaxInstances) {
		pr.add("min_idle", "%d: want 0 to max_instances (%d)", p.MinIdle, p.MaxInstances)
	}
	if len(p.Schedule) > schedulesPerPoolLimit {
		pr.add("schedule", "%d windows: at most %d", len(p.Schedule), schedulesPerPoolLimit)
	}
	for i := range p.Schedule {
		p.Schedule[i].validate(pr, fmt.Sprintf("schedule[%d]", i), p.MaxInstances)
	}
	if d := p.MaxVMLifetime.Duration; d != 0 && (d < minVMLifetime || d > maxVMLifetime) {
		pr.add("max_vm_lifetime", "%s: want %s to %s", d, minVMLifetime, maxVMLifetime)
	}
	if d := p.BootBudget.Duration; d != 0 && (d < minBootBudget || d > maxBootBudget) {
		pr.add("boot_budget", "%s: want %s to %s", d, minBootBudget, maxBootBudget)
	}
	if !p.Spot.Enabled && p.Spot.OnDemandFallback != nil {
		pr.add("spot.on_demand_fallback", "applies only with spot.enabled: true")
	}
	if len(p.Tags) > maxTags {
		pr.add("tags", "%d tags: at most %d", len(p.Tags), maxTags)
	}
	for k, v := range p.Tags {
		switch {
		case k == "" || len(k) > 128:
			pr.add("tags", "key %q: want 1 to 128 characters", k)
		case strings.HasPrefix(strings.ToLower(k), awsReservedTagPrefix):
			pr.add("tags", "key %q: the aws: prefix is AWS's", k)
		case strings.HasPrefix(strings.ToLower(k), reservedTagPrefix):
			pr.add("tags", "key %q: the slipway: prefix is Slipway's own (deployment, pool, launch id)", k)
		case len(v) > 256:
			pr.add("tags", "%s: value over 256 characters", k)
		}
	}
	for i, who := range p.Principals {
		if who == "" || len(who) > 512 || strings.ContainsFunc(who, unicode.IsSpace) {
			pr.add(fmt.Sprintf("principals[%d]", i), "%q: want an IAM role or user ARN (arn:aws:iam::123456789012:role/ci), * allowed", who)
		}
	}
	if len(p.UserData) > MaxUserDataBytes {
		pr.add("user_data", "%d bytes: at most %d (EC2 allows 16 KiB, the agent install takes the rest)", len(p.UserData), MaxUserDataBytes)
	}
}

func (w *Window) validate(pr *problems, key string, maxInstances int) {
	sched, err := cron.ParseStandard(w.Cron)
	if err != nil {
		pr.add(key+".cron", "%q: %v (want 5 fields: minute hour day month weekday)", w.Cron, err)
	} else if strings.HasPrefix(strings.TrimSpace(w.Cron), "CRON_TZ=") || strings.HasPrefix(strings.TrimSpace(w.Cron), "TZ=") {
		pr.add(key+".cron", "give the time zone in time_zone, not in the expression")
	}
	w.sched = sched
	tz := w.TimeZone
	if tz == "" {
		tz = "UTC"
	}
	loc, err := time.LoadLocation(tz)
	if err != nil {
		pr.add(key+".time_zone", "%q is not a time zone such as Europe/Berlin", w.TimeZone)
	}
	w.loc = loc
	if w.MinIdle < 0 || (maxInstances > 0 && w.MinIdle > maxInstances) {
		pr.add(key+".min_idle", "%d: want 0 to max_instances (%d)", w.MinIdle, maxInstances)
	}
}

func duplicate(list []string) string {
	seen := map[string]bool{}
	for _, s := range list {
		if seen[s] {
			return s
		}
		seen[s] = true
	}
	return ""
}

func (c *Config) applyDefaults() {
	for i := range c.Pools {
		p := &c.Pools[i]
		if p.RootVolume.SizeGB == 0 {
			p.RootVolume.SizeGB = DefaultVolumeGB
		}
		if p.RootVolume.Type == "" {
			p.RootVolume.Type = DefaultVolumeType
		}
		if p.MaxVMLifetime.Duration == 0 {
			p.MaxVMLifetime.Duration = DefaultMaxVMLifetime
		}
		if p.BootBudget.Duration == 0 {
			p.BootBudget.Duration = DefaultBootBudget
			if p.OS == "windows" {
				p.BootBudget.Duration = DefaultWindowsBudget
			}
		}
		if ssmPathPattern.MatchString(p.AMI) {
			p.AMI = "resolve:ssm:" + p.AMI
		}
	}
}

// Pool returns the pool with the given name.
func (c *Config) Pool(name string) (*Pool, bool) {
	for i := range c.Pools {
		if c.Pools[i].Name == name {
			return &c.Pools[i], true
		}
	}
	return nil, false
}

// WarmTarget is how many idle VMs the pool should have at t: the largest
// min_idle of the schedule windows that match t's minute, or the pool's
// min_idle when none does.
func (p *Pool) WarmTarget(t time.Time) int {
	target, matched := 0, false
	for _, w := range p.Schedule {
		if w.matches(t) {
			target, matched = max(target, w.MinIdle), true
		}
	}
	if !matched {
		return p.MinIdle
	}
	return target
}

func (w *Window) matches(t time.Time) bool {
	if w.sched == nil || w.loc == nil {
		return false
	}
	minute := t.In(w.loc).Truncate(time.Minute)
	return w.sched.Next(minute.Add(-time.Second)).Equal(minute)
}
