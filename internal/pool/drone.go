package pool

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// droneFile is the part of a drone-runner-aws pool file the import reads.
type droneFile struct {
	Instances []droneInstance `yaml:"instances"`
}

type droneInstance struct {
	Name     string `yaml:"name"`
	Type     string `yaml:"type"`
	Pool     int    `yaml:"pool"`
	Limit    int    `yaml:"limit"`
	Platform struct {
		OS   string `yaml:"os"`
		Arch string `yaml:"arch"`
	} `yaml:"platform"`
	Spec struct {
		AMI     string `yaml:"ami"`
		Size    string `yaml:"size"`
		SizeAlt string `yaml:"size_alt"`
		Network struct {
			SecurityGroups    []string    `yaml:"security_groups"`
			VPCSecurityGroups []string    `yaml:"vpc_security_groups"`
			SubnetID          string      `yaml:"subnet_id"`
			ZoneDetails       []droneZone `yaml:"zone_details"`
		} `yaml:"network"`
		// ZoneDetails here is the older place of network.zone_details.
		ZoneDetails []droneZone `yaml:"zone_details"`
		Disk        struct {
			Size int    `yaml:"size"`
			Type string `yaml:"type"`
		} `yaml:"disk"`
		Account struct {
			KeyPairName string `yaml:"key_pair_name"`
		} `yaml:"account"`
		IAMProfileARN string            `yaml:"iam_profile_arn"`
		UserData      string            `yaml:"user_data"`
		Tags          map[string]string `yaml:"tags"`
		MarketType    string            `yaml:"market_type"`
	} `yaml:"spec"`
}

// droneZone is one availability zone of a multi-AZ pool.
type droneZone struct {
	AvailabilityZone string `yaml:"availability_zone"`
	SubnetID         string `yaml:"subnet_id"`
}

// converted are the drone keys (paths under an instance) the import carries over.
var converted = []string{
	"name", "type", "pool", "limit", "platform.os", "platform.arch",
	"spec.ami", "spec.size", "spec.size_alt", "spec.network.security_groups", "spec.network.vpc_security_groups",
	"spec.network.subnet_id", "spec.network.zone_details", "spec.zone_details",
	"spec.disk.size", "spec.disk.type", "spec.account.key_pair_name", "spec.iam_profile_arn",
	"spec.user_data", "spec.tags", "spec.market_type",
}

// whyNot says why some drone keys have no counterpart.
var whyNot = map[string]string{
	"default":                        "the delegate names the pool of each stage",
	"spec.account.region":            "the region is the deployment's",
	"spec.account.access_key_id":     "functions use their IAM role, never keys",
	"spec.account.access_key_secret": "functions use their IAM role, never keys",
	"spec.account.availability_zone": "the subnets decide the availability zones",
	"spec.network.private_ip":        "agents are always reached on the private address",
	"spec.hibernate":                 "there is no hibernated tier yet",
	"spec.user_data_path":            "put the file's content under user_data",
	"spec.disk.iops":                 "provisioned IOPS are not configurable yet",
}

var nameFixer = regexp.MustCompile(`[^a-z0-9-]+`)

// ImportDrone converts a drone-runner-aws pool file. It returns the converted
// configuration (which may still need values the drone file lacked: Check it)
// and the list of what was not converted, and why.
func ImportDrone(data []byte) (*Config, []string, error) {
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil, errors.New("the file is empty: want a drone-runner-aws pool file (version and instances)")
		}
		return nil, nil, fmt.Errorf("not YAML: %w", err)
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		line := more.Line
		if len(more.Content) > 0 {
			line = more.Content[0].Line
		}
		return nil, nil, fmt.Errorf("line %d: a second YAML document: the import reads one pool file; split the file", line)
	}
	var file droneFile
	if err := root.Decode(&file); err != nil {
		return nil, nil, fmt.Errorf("not a drone-runner-aws pool file: %w", userTerms(err))
	}
	if len(file.Instances) == 0 {
		return nil, nil, errors.New("not a drone-runner-aws pool file: no instances")
	}
	instanceNodes := instancesNodes(&root)
	cfg := &Config{}
	var notes []string
	for i, in := range file.Instances {
		label := in.Name
		if label == "" {
			label = fmt.Sprintf("#%d", i+1)
		}
		note := func(format string, args ...any) {
			notes = append(notes, fmt.Sprintf("instance %s: %s", label, fmt.Sprintf(format, args...)))
		}
		if in.Type != "" && in.Type != "amazon" && in.Type != "aws" {
			note("type %q: only amazon instances convert; left out", in.Type)
			continue
		}
		if i < len(instanceNodes) {
			for _, path := range leafPaths(instanceNodes[i], "") {
				if slices.ContainsFunc(converted, func(c string) bool {
					return path == c || strings.HasPrefix(path, c+".") || strings.HasPrefix(path, c+"[")
				}) {
					continue
				}
				if why, ok := whyNot[path]; ok {
					note("%s not converted: %s", path, why)
				} else {
					note("%s not converted: Slipway has no such setting", path)
				}
			}
		}
		p := Pool{
			Name:               nameFixer.ReplaceAllString(strings.ToLower(in.Name), "-"),
			OS:                 in.Platform.OS,
			Arch:               in.Platform.Arch,
			AMI:                in.Spec.AMI,
			SecurityGroups:     union(in.Spec.Network.SecurityGroups, in.Spec.Network.VPCSecurityGroups),
			MinIdle:            in.Pool,
			MaxInstances:       in.Limit,
			RootVolume:         Volume{SizeGB: in.Spec.Disk.Size, Type: in.Spec.Disk.Type},
			IAMInstanceProfile: in.Spec.IAMProfileARN,
			KeyPair:            in.Spec.Account.KeyPairName,
			Tags:               in.Spec.Tags,
			UserData:           in.Spec.UserData,
		}
		switch market := strings.ToLower(strings.TrimSpace(in.Spec.MarketType)); market {
		case "spot":
			p.Spot.Enabled = true
		case "", "on-demand", "ondemand", "on_demand":
		default:
			note("market_type %q: want spot or on-demand; the pool is on-demand", in.Spec.MarketType)
		}
		if p.Name != in.Name {
			note("name %q becomes %q", in.Name, p.Name)
		}
		if p.OS == "" {
			p.OS = "linux"
		}
		if p.Arch == "" {
			p.Arch = "amd64"
		}
		p.InstanceTypes = union(nonEmpty(in.Spec.Size), nonEmpty(in.Spec.SizeAlt))
		// Subnets the multi-AZ way (zone_details, in order), or the one
		// subnet_id.
		for _, z := range append(slices.Clone(in.Spec.Network.ZoneDetails), in.Spec.ZoneDetails...) {
			if z.SubnetID == "" {
				note("zone_details: zone %q has no subnet_id; left out", z.AvailabilityZone)
				continue
			}
			p.Subnets = union(p.Subnets, []string{z.SubnetID})
		}
		p.Subnets = union(p.Subnets, nonEmpty(in.Spec.Network.SubnetID))
		if len(p.Subnets) == 0 {
			note("no subnet_id or zone_details: fill in subnets (one per availability zone), or deploy with the CDK stack, which fills them in")
		}
		if len(p.SecurityGroups) == 0 {
			note("no security_groups: fill in the group that admits port 9079 from the functions, or deploy with the CDK stack, which adds its own")
		}
		if p.MaxInstances == 0 {
			p.MaxInstances = max(p.MinIdle, 1) * 4
			note("no limit: max_instances set to %d; choose yours", p.MaxInstances)
		}
		if p.UserData != "" {
			note("user_data kept: Slipway installs its agent itself, so keep only your own additions")
		}
		cfg.Pools = append(cfg.Pools, p)
	}
	return cfg, notes, nil
}

// union is a followed by what b adds, without repeats.
func union(a, b []string) []string {
	out := slices.Clone(a)
	for _, v := range b {
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

func nonEmpty(v string) []string {
	if v == "" {
		return nil
	}
	return []string{v}
}

// goTypes are the Go types the YAML decoder names in its errors, in the
// user's words.
var goTypes = strings.NewReplacer(
	"[]pool.droneInstance", "a list of instances", "pool.droneInstance", "an instance", "pool.droneFile", "a pool file",
	"[]pool.droneZone", "a list of zones", "pool.droneZone", "a zone", "map[string]string", "a mapping of strings",
	"[]string", "a list of strings", "!!map", "a mapping", "!!seq", "a list", "!!str", "a string", "!!int", "a number",
	"!!bool", "true or false", "[]pool.Pool", "a list of pools", "pool.Pool", "a pool", "[]pool.Window", "a list of windows",
	"pool.Window", "a schedule window", "pool.Volume", "a root volume", "pool.Spot", "spot settings", "pool.Duration", "a duration",
	"cannot unmarshal", "cannot read", " into ", " as ",
)

// userTerms rewrites a YAML decoding error without Go's types.
func userTerms(err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return err
	}
	var msgs []string
	for _, e := range te.Errors {
		msgs = append(msgs, goTypes.Replace(e))
	}
	return errors.New(strings.Join(msgs, "; "))
}

// instancesNodes returns the mapping node of each instance.
func instancesNodes(root *yaml.Node) []*yaml.Node {
	if n := topLevel(root, "instances"); n != nil && n.Kind == yaml.SequenceNode {
		return n.Content
	}
	return nil
}

// leafPaths lists the dotted paths of a mapping's leaves (lists count as leaves).
func leafPaths(n *yaml.Node, prefix string) []string {
	if n.Kind != yaml.MappingNode {
		return []string{prefix}
	}
	var out []string
	for i := 0; i+1 < len(n.Content); i += 2 {
		path := n.Content[i].Value
		if prefix != "" {
			path = prefix + "." + path
		}
		out = append(out, leafPaths(n.Content[i+1], path)...)
	}
	return out
}

// Marshal writes a configuration as a pools file.
func Marshal(cfg *Config) ([]byte, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(cfg); err != nil {
		return nil, fmt.Errorf("write pools file: %w", err)
	}
	return buf.Bytes(), nil
}
