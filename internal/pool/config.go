// Package pool reads and checks the warm pools' configuration (pools.yaml)
// and answers what it implies: the warm target of a pool at a given time.
// It also converts a drone-runner-aws pool file into this format.
package pool

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"
	_ "time/tzdata" // schedule windows name time zones; Lambda images have no zoneinfo

	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/robfig/cron/v3"
	"go.yaml.in/yaml/v3"
)

// Config is a pools.yaml file.
type Config struct {
	Pools []Pool `yaml:"pools"`
}

// Pool is one warm pool of identical VMs.
type Pool struct {
	Name string `yaml:"name"`
	OS   string `yaml:"os"`   // linux or windows
	Arch string `yaml:"arch"` // amd64 or arm64
	// InstanceTypes are tried in order when EC2 has no capacity for one.
	InstanceTypes []string `yaml:"instance_types"`
	// AMI is an image id (ami-...) or an SSM parameter path
	// (resolve:ssm:/aws/service/..., or just the path), resolved at launch.
	AMI            string            `yaml:"ami"`
	Subnets        []string          `yaml:"subnets"`
	SecurityGroups []string          `yaml:"security_groups"`
	RootVolume     Volume            `yaml:"root_volume,omitempty"`
	MinIdle        int               `yaml:"min_idle,omitempty"`
	Schedule       []Window          `yaml:"schedule,omitempty"`
	MaxInstances   int               `yaml:"max_instances"`
	MaxVMLifetime  Duration          `yaml:"max_vm_lifetime,omitempty"`
	BootBudget     Duration          `yaml:"boot_budget,omitempty"`
	Spot           Spot              `yaml:"spot,omitempty"`
	Tags           map[string]string `yaml:"tags,omitempty"`
	// IAMInstanceProfile is the name or ARN of the build VMs' instance profile.
	IAMInstanceProfile string `yaml:"iam_instance_profile,omitempty"`
	KeyPair            string `yaml:"key_pair,omitempty"`
	// UserData is a script run after the agent is installed (shell on
	// Linux, PowerShell on Windows).
	UserData string `yaml:"user_data,omitempty"`
	// Principals are who may run stages in the pool: IAM role or user ARNs
	// as the delegate API names its callers (an assumed role's session is
	// its role), * matching any run of characters as in IAM's ArnLike.
	// Empty: every caller the API admits.
	Principals []string `yaml:"principals,omitempty"`
}

// Admits reports whether principal may run stages in the pool.
func (p *Pool) Admits(principal string) bool {
	return len(p.Principals) == 0 || MatchesAny(p.Principals, principal)
}

// MatchesAny reports whether principal matches one of patterns, where *
// matches any run of characters and ? one (IAM's ArnLike).
func MatchesAny(patterns []string, principal string) bool {
	for _, p := range patterns {
		if globMatch(p, principal) {
			return true
		}
	}
	return false
}

func globMatch(pattern, s string) bool {
	// The last * seen and where s stood then: on a mismatch, the star takes
	// one more character.
	star, from := -1, 0
	for i, j := 0, 0; j < len(s) || i < len(pattern); {
		switch {
		case i < len(pattern) && pattern[i] == '*':
			star, from = i, j
			i++
		case i < len(pattern) && j < len(s) && (pattern[i] == '?' || pattern[i] == s[j]):
			i, j = i+1, j+1
		case star >= 0 && from < len(s):
			from++
			i, j = star+1, from
		default:
			return false
		}
	}
	return true
}

// Volume is the root volume.
type Volume struct {
	SizeGB int    `yaml:"size_gb,omitempty"`
	Type   string `yaml:"type,omitempty"`
}

// Window sets the pool's min idle while its cron expression matches the
// current minute in its time zone: "* 8-18 * * 1-5" with Europe/Berlin is
// office hours in Berlin.
type Window struct {
	Cron     string `yaml:"cron"`
	TimeZone string `yaml:"time_zone,omitempty"`
	MinIdle  int    `yaml:"min_idle,omitempty"`

	sched cron.Schedule
	loc   *time.Location
}

// Spot asks for spot instances, falling back to on-demand when EC2 has no
// spot capacity (unless on_demand_fallback is false).
type Spot struct {
	Enabled          bool  `yaml:"enabled,omitempty"`
	OnDemandFallback *bool `yaml:"on_demand_fallback,omitempty"`
}

// FallBackToOnDemand reports whether a spot pool may launch on-demand.
func (s Spot) FallBackToOnDemand() bool { return s.OnDemandFallback == nil || *s.OnDemandFallback }

// Duration is a time.Duration written as "12h" or "90m".
type Duration struct{ time.Duration }

// UnmarshalYAML reads a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration such as 12h or 90m", n.Line, n.Value)
	}
	d.Duration = v
	return nil
}

// IsZero lets omitempty leave an unset duration out.
func (d Duration) IsZero() bool { return d.Duration == 0 }

// MarshalYAML writes the duration string.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// Defaults of optional keys.
const (
	DefaultVolumeGB       = 50
	DefaultVolumeType     = "gp3"
	DefaultMaxVMLifetime  = 12 * time.Hour
	DefaultBootBudget     = 10 * time.Minute
	DefaultWindowsBudget  = 20 * time.Minute
	MaxUserDataBytes      = 8 << 10 // EC2 allows 16 KiB; the agent install takes the rest
	maxTags               = 40
	maxInstancesPerPool   = 1000
	reservedTagPrefix     = "slipway:"
	awsReservedTagPrefix  = "aws:"
	minVMLifetime         = 10 * time.Minute
	maxVMLifetime         = 7 * 24 * time.Hour
	minBootBudget         = time.Minute
	maxBootBudget         = time.Hour
	minVolumeGB           = 8
	maxVolumeGB           = 16384
	schedulesPerPoolLimit = 20
)

var (
	namePattern         = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,39}$`)
	instanceTypePattern = regexp.MustCompile(`^[a-z][a-z0-9-]*\.[a-z0-9]+$`)
	amiPattern          = regexp.MustCompile(`^ami-[0-9a-f]{8,17}$`)
	ssmPathPattern      = regexp.MustCompile(`^/[A-Za-z0-9_./-]+$`)
	subnetPattern       = regexp.MustCompile(`^subnet-[0-9a-f]{8,17}$`)
	securityGroup       = regexp.MustCompile(`^sg-[0-9a-f]{8,17}$`)
	volumeTypes         = []string{"gp2", "gp3", "io1", "io2", "st1", "sc1", "standard"}
)

// Network is what a deployment gives every pool: the subnets a pool that
// names none launches in, and the security groups every pool's VMs get (the
// CDK stack's, which admits the agent's port from the functions). A stack
// that creates its VPC knows its subnets only once deployed, so the
// functions read them from their environment, not from the pools file.
type Network struct {
	Subnets        []string
	SecurityGroups []string
}

func (n Network) apply(c *Config) {
	for i := range c.Pools {
		p := &c.Pools[i]
		if len(p.Subnets) == 0 {
			p.Subnets = slices.Clone(n.Subnets)
		}
		p.SecurityGroups = union(p.SecurityGroups, n.SecurityGroups)
	}
}

// Load reads and checks a pools file.
func Load(path string) (*Config, error) { return LoadFor(path, Network{}) }

// LoadFor reads and checks a pools file deployed into the network n.
func LoadFor(path string, n Network) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read pools file: %w", err)
	}
	cfg, err := ParseFor(data, n)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// Parse reads and checks a pools file's content. The error lists every
// problem found, each with the pool and key it concerns; unknown keys are
// problems too.
func Parse(data []byte) (*Config, error) { return ParseFor(data, Network{}) }

// ParseFor is Parse for a pools file deployed into the network n: its
// subnets and security groups complete each pool's before the checks.
func ParseFor(data []byte, n Network) (*Config, error) {
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("the pools file is empty: want a list of pools under the key pools")
		}
		return nil, fmt.Errorf("not YAML: %w", err)
	}
	if looksLikeDrone(&root) {
		return nil, errors.New("this is a drone-runner-aws pool file (it has instances, not pools): convert it with `slipway pools import FILE`")
	}
	var problems []error
	checkKeys(&root, reflect.TypeFor[Config](), "", &problems)
	var cfg Config
	if err := root.Decode(&cfg); err != nil {
		problems = append(problems, userTerms(err))
		return nil, errors.Join(problems...)
	}
	n.apply(&cfg)
	problems = append(problems, cfg.validate()...)
	if len(problems) > 0 {
		return nil, errors.Join(problems...)
	}
	cfg.applyDefaults()
	return &cfg, nil
}

// looksLikeDrone reports whether a document has drone-runner-aws's
// top-level instances and none of our pools.
func looksLikeDrone(root *yaml.Node) bool {
	return topLevel(root, "instances") != nil && topLevel(root, "pools") == nil
}

// topLevel is the value of a document's top-level key (nil: none).
func topLevel(root *yaml.Node, key string) *yaml.Node {
	doc := root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) > 0 {
		doc = doc.Content[0]
	}
	if doc.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(doc.Content); i += 2 {
		if doc.Content[i].Value == key {
			return doc.Content[i+1]
		}
	}
	return nil
}

// UnknownInstanceTypes are the pool's instance types that the AWS SDK this
// build has does not list: a typo, or a type newer than the SDK.
func (p *Pool) UnknownInstanceTypes() []string {
	known := ec2types.InstanceType("").Values()
	var out []string
	for _, t := range p.InstanceTypes {
		if !slices.Contains(known, ec2types.InstanceType(t)) {
			out = append(out, t)
		}
	}
	return out
}

// checkKeys reports the mapping keys that t has no field for.
func checkKeys(n *yaml.Node, t reflect.Type, where string, problems *[]error) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			checkKeys(c, t, where, problems)
		}
	case yaml.SequenceNode:
		if t.Kind() == reflect.Slice {
			for i, c := range n.Content {
				checkKeys(c, t.Elem(), fmt.Sprintf("%s[%s]", where, elementName(c, i)), problems)
			}
		}
	case yaml.MappingNode:
		if t.Kind() == reflect.Map {
			return // tags: any key
		}
		if t.Kind() != reflect.Struct {
			return
		}
		fields := map[string]reflect.StructField{}
		for i := range t.NumField() {
			f := t.Field(i)
			if name, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); name != "" && name != "-" {
				fields[name] = f
			}
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, val := n.Content[i], n.Content[i+1]
			f, ok := fields[key.Value]
			path := strings.TrimPrefix(where+"."+key.Value, ".")
			if !ok {
				*problems = append(*problems, fmt.Errorf("line %d: %s: unknown key %q (known: %s)", key.Line, describe(where), key.Value, knownKeys(fields)))
				continue
			}
			if f.Type == reflect.TypeFor[Duration]() {
				if _, err := time.ParseDuration(val.Value); err != nil {
					*problems = append(*problems, fmt.Errorf("line %d: %s: %q is not a duration such as 12h or 90m", val.Line, path, val.Value))
					// Decode on past it, so the other problems are reported too.
					val.Value, val.Tag = "0s", "!!str"
				}
				continue
			}
			checkKeys(val, f.Type, path, problems)
		}
	}
}

// elementName names a list element by its name key, else by its index.
func elementName(n *yaml.Node, i int) string {
	if n.Kind == yaml.MappingNode {
		for j := 0; j+1 < len(n.Content); j += 2 {
			if n.Content[j].Value == "name" && n.Content[j+1].Value != "" {
				return n.Content[j+1].Value
			}
		}
	}
	return fmt.Sprint(i)
}

func describe(where string) string {
	if where == "" {
		return "top level"
	}
	return where
}

func knownKeys(fields map[string]reflect.StructField) string {
	var names []string
	for k := range fields {
		names = append(names, k)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}
