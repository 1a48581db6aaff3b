package pool

import (
	"bytes"
	"errors"
	"fmt"
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
		Network struct {
			SecurityGroups []string `yaml:"security_groups"`
			SubnetID       string   `yaml:"subnet_id"`
		} `yaml:"network"`
		Disk struct {
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

// converted are the drone keys (paths under an instance) the import carries over.
var converted = []string{
	"name", "type", "pool", "limit", "platform.os", "platform.arch",
	"spec.ami", "spec.size", "spec.network.security_groups", "spec.network.subnet_id",
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
	if err := yaml.NewDecoder(bytes.NewReader(data)).Decode(&root); err != nil {
		return nil, nil, fmt.Errorf("not YAML: %w", err)
	}
	var file droneFile
	if err := root.Decode(&file); err != nil {
		return nil, nil, fmt.Errorf("not a drone-runner-aws pool file: %w", err)
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
			SecurityGroups:     in.Spec.Network.SecurityGroups,
			MinIdle:            in.Pool,
			MaxInstances:       in.Limit,
			RootVolume:         Volume{SizeGB: in.Spec.Disk.Size, Type: in.Spec.Disk.Type},
			IAMInstanceProfile: in.Spec.IAMProfileARN,
			KeyPair:            in.Spec.Account.KeyPairName,
			Tags:               in.Spec.Tags,
			UserData:           in.Spec.UserData,
			Spot:               Spot{Enabled: in.Spec.MarketType == "spot"},
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
		if in.Spec.Size != "" {
			p.InstanceTypes = []string{in.Spec.Size}
		}
		if in.Spec.Network.SubnetID != "" {
			p.Subnets = []string{in.Spec.Network.SubnetID}
		} else {
			note("no subnet_id: fill in subnets (one per availability zone)")
		}
		if len(p.SecurityGroups) == 0 {
			note("no security_groups: fill in the group that admits port 9079 from the functions")
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

// instancesNodes returns the mapping node of each instance.
func instancesNodes(root *yaml.Node) []*yaml.Node {
	doc := root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) > 0 {
		doc = doc.Content[0]
	}
	if doc.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(doc.Content); i += 2 {
		if doc.Content[i].Value == "instances" && doc.Content[i+1].Kind == yaml.SequenceNode {
			return doc.Content[i+1].Content
		}
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
