package main

import (
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/aws/aws-cdk-go/awscdk/v2"
	"github.com/aws/aws-cdk-go/awscdk/v2/assertions"
	"github.com/aws/constructs-go/constructs/v10"
	"github.com/aws/jsii-runtime-go"
	"github.com/pb33f/libopenapi"

	"github.com/slipway-ci/slipway/internal/ddb"
	"github.com/slipway-ci/slipway/internal/deploy"
	"github.com/slipway-ci/slipway/internal/fleet"
	"github.com/slipway-ci/slipway/internal/metrics"
	"github.com/slipway-ci/slipway/internal/secret"
	"github.com/slipway-ci/slipway/internal/stage"
	"github.com/slipway-ci/slipway/statemachine"
)

// The tests run in infra/; the assets (make build lambdas) are at the root.
const root = ".."

// cdkContext is cdk.json's context, the defaults a user starts from.
func cdkContext(t *testing.T) map[string]any {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "cdk.json"))
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		App     string         `json:"app"`
		Context map[string]any `json:"context"`
	}
	if err := json.Unmarshal(data, &file); err != nil {
		t.Fatalf("cdk.json: %v", err)
	}
	if file.App != "go run ./infra" {
		t.Errorf("cdk.json app %q", file.App)
	}
	return file.Context
}

// synth is one deployment's template, with cdk-nag's findings.
type synth struct {
	stack     *Stack
	resources map[string]resource
	metadata  map[string]any
	errors    []string
}

type resource struct {
	Type       string         `json:"Type"`
	Properties map[string]any `json:"Properties"`
	Metadata   map[string]any `json:"Metadata"`
}

// synthesize declares the stack with cdk.json's context and the overrides,
// as `cdk synth` would.
func synthesize(t *testing.T, overrides map[string]any) *synth {
	t.Helper()
	for _, f := range []string{"bin/lambda/api.zip", "bin/" + agentBinary("linux/arm64")} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Fatalf("%v: run make build lambdas first", err)
		}
	}
	ctx := cdkContext(t)
	maps.Copy(ctx, overrides)
	app := awscdk.NewApp(&awscdk.AppProps{Context: &ctx, Outdir: jsii.String(t.TempDir())})
	stack, err := Synth(app, root)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := assertions.Template_FromStack(stack.Stack, nil)
	data, err := json.Marshal(tmpl.ToJSON())
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Resources map[string]resource `json:"Resources"`
		Metadata  map[string]any      `json:"Metadata"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	s := &synth{stack: stack, resources: doc.Resources, metadata: doc.Metadata}
	for _, m := range *assertions.Annotations_FromStack(stack.Stack).FindError(jsii.String("*"), assertions.Match_StringLikeRegexp(jsii.String(".*"))) {
		// Annotations answers with cxapi's messages, whose replacement
		// (@aws-cdk/cloud-assembly-api) has no Go binding yet.
		s.errors = append(s.errors, fmt.Sprint(m.Entry.Data)) //nolint:staticcheck // see above

	}
	return s
}

// one is the only resource of a type: a test of it must not pass for want
// of it.
func (s *synth) one(t *testing.T, typ string) (string, resource) {
	t.Helper()
	all := s.ofType(typ)
	if len(all) != 1 {
		t.Fatalf("%d resources of type %s, want 1", len(all), typ)
	}
	for id, r := range all {
		return id, r
	}
	panic("unreachable")
}

func (s *synth) ofType(typ string) map[string]resource {
	out := map[string]resource{}
	for id, r := range s.resources {
		if r.Type == typ {
			out[id] = r
		}
	}
	return out
}

// flatten writes a CloudFormation value as one string: Refs and GetAtts as
// <Ref X> and <X.Attr>, joins joined.
func flatten(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case map[string]any:
		if ref, ok := v["Ref"].(string); ok {
			return "<Ref " + ref + ">"
		}
		if att, ok := v["Fn::GetAtt"].([]any); ok && len(att) == 2 {
			return fmt.Sprintf("<%v.%v>", att[0], att[1])
		}
		if join, ok := v["Fn::Join"].([]any); ok && len(join) == 2 {
			parts, _ := join[1].([]any)
			s := make([]string, len(parts))
			for i, p := range parts {
				s[i] = flatten(p)
			}
			return strings.Join(s, join[0].(string))
		}
	}
	data, _ := json.Marshal(v)
	return "<?" + string(data) + ">"
}

func strs(v any) []string {
	switch v := v.(type) {
	case []any:
		var out []string
		for _, x := range v {
			out = append(out, flatten(x))
		}
		return out
	case nil:
		return nil
	default:
		return []string{flatten(v)}
	}
}

type statement struct {
	Sid       string
	Actions   []string
	Resources []string
	Condition map[string]any
}

// functionsByName maps each function's short name to its logical id.
func (s *synth) functionsByName(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for id, r := range s.ofType("AWS::Lambda::Function") {
		name, _ := r.Properties["FunctionName"].(string)
		short := strings.TrimPrefix(name, s.stack.name(""))
		out[short] = id
	}
	for _, f := range statemachine.Functions {
		if out[f.Name] == "" {
			t.Fatalf("no function %s in %v", f.Name, out)
		}
	}
	return out
}

// statements are the policy statements of each function's role.
func (s *synth) statements(t *testing.T) map[string][]statement {
	t.Helper()
	roleOf := map[string]string{}
	for name, id := range s.functionsByName(t) {
		roleOf[strings.Trim(strings.Split(flatten(s.resources[id].Properties["Role"]), ".")[0], "<")] = name
	}
	out := map[string][]statement{}
	for _, p := range s.ofType("AWS::IAM::Policy") {
		for _, role := range strs(p.Properties["Roles"]) {
			name, ok := roleOf[strings.TrimSuffix(strings.TrimPrefix(role, "<Ref "), ">")]
			if !ok {
				continue
			}
			doc := p.Properties["PolicyDocument"].(map[string]any)
			for _, st := range doc["Statement"].([]any) {
				m := st.(map[string]any)
				if m["Effect"] != "Allow" {
					t.Errorf("%s: statement %v is not an Allow", name, m)
				}
				sid, _ := m["Sid"].(string)
				cond, _ := m["Condition"].(map[string]any)
				out[name] = append(out[name], statement{Sid: sid, Actions: strs(m["Action"]), Resources: strs(m["Resource"]), Condition: cond})
			}
		}
	}
	if len(out) != len(statemachine.Functions) {
		t.Fatalf("policies found for %d functions, want %d: the test reads the roles wrong", len(out), len(statemachine.Functions))
	}
	return out
}

func TestDefaultDeployment(t *testing.T) {
	s := synthesize(t, nil)

	t.Run("cdk-nag AwsSolutions finds nothing unsuppressed", func(t *testing.T) {
		if len(s.errors) > 0 {
			t.Errorf("%d errors:\n%s", len(s.errors), strings.Join(s.errors, "\n"))
		}
	})

	t.Run("every suppression has its own written reason", func(t *testing.T) {
		seen := map[string]string{}
		n := 0
		metadata := []map[string]any{s.metadata}
		for _, r := range s.resources {
			metadata = append(metadata, r.Metadata)
		}
		for _, md := range metadata {
			nag, _ := md["cdk_nag"].(map[string]any)
			rules, _ := nag["rules_to_suppress"].([]any)
			for _, rule := range rules {
				m := rule.(map[string]any)
				id, reason := m["id"].(string), m["reason"].(string)
				n++
				if len(reason) < 60 {
					t.Errorf("%s: reason %q says too little", id, reason)
				}
				if other, dup := seen[reason]; dup && other != id {
					t.Errorf("%s and %s share the reason %q", id, other, reason)
				}
				seen[reason] = id
			}
		}
		if n == 0 {
			t.Error("no suppression found in the template's metadata: the test looks in the wrong place")
		}
	})

	t.Run("each function may do exactly what its handler does", func(t *testing.T) {
		byFunction := s.statements(t)
		common := []string{"logs:CreateLogStream", "logs:PutLogEvents",
			"ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets", "ec2:DeleteNetworkInterface",
			"ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses",
			"kms:Sign", "kms:GetPublicKey"}
		common = append(common, tableActions...)
		launch := []string{"ec2:RunInstances", "ec2:CreateTags", "iam:PassRole", "ec2:DescribeImages", "ssm:GetParameter", "s3:GetObject", "ec2:TerminateInstances"}
		want := map[string][]string{
			statemachine.API:      {"kms:GenerateDataKey", "states:StartExecution", "lambda:InvokeFunction", "s3:GetObject", "s3:ListBucket"},
			statemachine.Init:     append([]string{"kms:Decrypt"}, launch...),
			statemachine.RunGroup: {"kms:Decrypt", "s3:PutObject", "s3:AbortMultipartUpload"},
			statemachine.Cleanup:  {"ec2:TerminateInstances", "lambda:InvokeFunction", "s3:PutObject", "s3:AbortMultipartUpload"},
			statemachine.Refill:   append([]string{"ec2:DescribeInstances", "states:DescribeExecution", "lambda:InvokeFunction"}, launch...),
		}
		unscopable := []string{"ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets", "ec2:DeleteNetworkInterface",
			"ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses", "ec2:DescribeInstances", "ec2:DescribeImages"}
		for name, sts := range byFunction {
			var got []string
			for _, st := range sts {
				for _, a := range st.Actions {
					if strings.HasSuffix(a, "*") {
						t.Errorf("%s: wildcard action %s", name, a)
					}
					got = append(got, a)
					for _, r := range st.Resources {
						if r == "*" && !slices.Contains(unscopable, a) {
							t.Errorf("%s: %s on every resource", name, a)
						}
					}
				}
			}
			slices.Sort(got)
			got = slices.Compact(got)
			w := slices.Sorted(slices.Values(append(want[name], common...)))
			w = slices.Compact(w)
			if !slices.Equal(got, w) {
				t.Errorf("%s may do\n  %v\nwant\n  %v", name, got, w)
			}
		}
	})

	t.Run("each function writes only its partitions of the table (dynamodb:LeadingKeys)", func(t *testing.T) {
		for name, sts := range s.statements(t) {
			var bound []string
			for _, st := range sts {
				for _, a := range st.Actions {
					if !slices.Contains(tableWrites, a) {
						continue
					}
					like, _ := st.Condition["ForAllValues:StringLike"].(map[string]any)
					keys := strs(like["dynamodb:LeadingKeys"])
					if len(keys) == 0 {
						t.Errorf("%s: %s on any partition", name, a)
					}
					bound = keys
				}
			}
			var want []string
			for _, p := range deploy.Partitions[name] {
				if strings.HasSuffix(p, "#") {
					p += "*"
				}
				want = append(want, p)
			}
			if !slices.Equal(bound, want) || len(want) == 0 {
				t.Errorf("%s writes %v, want %v (deploy.Partitions)", name, bound, want)
			}
		}
		if slices.Contains(deploy.Partitions[statemachine.RunGroup], ddb.PoolPartitions) || slices.Contains(deploy.Partitions[statemachine.Refill], ddb.StagePartitions) {
			t.Error("rungroup may write VMs, or refill stages")
		}
	})

	t.Run("the table's calls are all granted", func(t *testing.T) {
		for m := range reflect.TypeFor[ddb.DB]().Methods() {
			action := "dynamodb:" + m.Name
			if m.Name == "TransactWriteItems" {
				continue // authorized by the actions it holds
			}
			if !slices.Contains(tableActions, action) {
				t.Errorf("ddb.DB calls %s, which no function may", m.Name)
			}
		}
	})

	t.Run("keys: secrets only under a stage's encryption context, by the functions that need them", func(t *testing.T) {
		byFunction := s.statements(t)
		keys := s.ofType("AWS::KMS::Key")
		var caKey, secretsKey string
		for id, k := range keys {
			switch k.Properties["KeySpec"] {
			case "ECC_NIST_P256":
				caKey = id
				if k.Properties["KeyUsage"] != "SIGN_VERIFY" {
					t.Errorf("CA key usage %v", k.Properties["KeyUsage"])
				}
			default:
				secretsKey = id
				if k.Properties["EnableKeyRotation"] != true {
					t.Error("the secrets key does not rotate")
				}
			}
		}
		if caKey == "" || secretsKey == "" || len(keys) != 2 {
			t.Fatalf("keys %v", slices.Collect(maps.Keys(keys)))
		}
		for name, sts := range byFunction {
			for _, st := range sts {
				for _, a := range st.Actions {
					switch a {
					case "kms:GenerateDataKey", "kms:Decrypt":
						if !slices.Equal(st.Resources, []string{"<" + secretsKey + ".Arn>"}) {
							t.Errorf("%s: %s on %v", name, a, st.Resources)
						}
						null, _ := st.Condition["Null"].(map[string]any)
						if null["kms:EncryptionContext:"+secret.ContextKey] != "false" {
							t.Errorf("%s: %s without the stage's encryption context: %v", name, a, st.Condition)
						}
					case "kms:Sign", "kms:GetPublicKey":
						if !slices.Equal(st.Resources, []string{"<" + caKey + ".Arn>"}) {
							t.Errorf("%s: %s on %v", name, a, st.Resources)
						}
					}
				}
			}
		}
	})

	t.Run("key policies: the account administers the keys, only the named roles use them", func(t *testing.T) {
		roles := map[string]string{} // role logical id -> function
		for name, id := range s.functionsByName(t) {
			roles[strings.Trim(strings.Split(flatten(s.resources[id].Properties["Role"]), ".")[0], "<")] = name
		}
		uses := map[string]map[string][]string{} // key -> action -> functions
		for id, k := range s.ofType("AWS::KMS::Key") {
			uses[id] = map[string][]string{}
			doc, _ := k.Properties["KeyPolicy"].(map[string]any)
			sts, _ := doc["Statement"].([]any)
			if len(sts) == 0 {
				t.Fatalf("key %s has no policy of its own: CDK's default gives the account kms:*", id)
			}
			for _, raw := range sts {
				st := raw.(map[string]any)
				principal, _ := st["Principal"].(map[string]any)
				arns := strs(principal["AWS"])
				cond, _ := json.Marshal(st["Condition"])
				for _, a := range strs(st["Action"]) {
					admin := slices.Contains(keyAdminActions, a)
					for _, arn := range arns {
						role := strings.TrimSuffix(strings.TrimPrefix(arn, "<"), ".Arn>")
						switch fn, isRole := roles[role]; {
						case strings.HasSuffix(arn, ":root") && admin:
						case isRole && !admin:
							uses[id][a] = append(uses[id][a], fn)
							if (a == "kms:Decrypt" || a == "kms:GenerateDataKey") && !strings.Contains(string(cond), `"kms:EncryptionContext:`+secret.ContextKey+`":"false"`) {
								t.Errorf("key %s: %s for %s without the stage's encryption context: %s", id, a, fn, cond)
							}
						default:
							t.Errorf("key %s: %s for %s: only the account administers, only functions use", id, a, arn)
						}
					}
				}
			}
		}
		ca := s.logicalIDOf(t, s.stack.caKey)
		secrets := s.logicalIDOf(t, s.stack.secretsKey)
		all := slices.Sorted(slices.Values([]string{statemachine.API, statemachine.Init, statemachine.RunGroup, statemachine.Cleanup, statemachine.Refill}))
		for key, want := range map[string]map[string][]string{
			ca:      {"kms:Sign": all, "kms:GetPublicKey": all},
			secrets: {"kms:GenerateDataKey": {statemachine.API}, "kms:Decrypt": {statemachine.Init, statemachine.RunGroup}},
		} {
			got := uses[key]
			for a := range got {
				slices.Sort(got[a])
			}
			for a := range want {
				slices.Sort(want[a])
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("key %s is used by %v, want %v", key, got, want)
			}
		}
	})

	t.Run("the API reads logs as S3 needs: objects, and the bucket's listing (else a missing key is a 403)", func(t *testing.T) {
		bucket := s.logicalIDOf(t, s.stack.logBucket)
		var list, get bool
		for _, st := range s.statements(t)[statemachine.API] {
			switch {
			case slices.Equal(st.Actions, []string{"s3:ListBucket"}):
				list = slices.Equal(st.Resources, []string{"<" + bucket + ".Arn>"})
			case slices.Equal(st.Actions, []string{"s3:GetObject"}):
				get = slices.Equal(st.Resources, []string{"<" + bucket + ".Arn>/*"})
			}
		}
		if !list || !get {
			t.Errorf("api: s3:ListBucket on the bucket %v, s3:GetObject on its objects %v", list, get)
		}
	})

	t.Run("the API's resource policy: the deployment's account only", func(t *testing.T) {
		_, api := s.one(t, "AWS::ApiGateway::RestApi")
		doc, _ := json.Marshal(api.Properties["Policy"])
		for _, want := range []string{`"Effect":"Allow"`, `"execute-api:Invoke"`, `":iam::` + s.stack.cfg.Account + `:root"`} {
			if !strings.Contains(string(doc), want) {
				t.Errorf("resource policy lacks %s: %s", want, doc)
			}
		}
		if strings.Contains(string(doc), `"AWS":"*"`) && !strings.Contains(string(doc), `"Effect":"Deny"`) {
			t.Errorf("resource policy allows any principal: %s", doc)
		}
	})

	t.Run("instances: launched only from the deployment's templates, tagged, IMDSv2, encrypted; terminated only if tagged", func(t *testing.T) {
		checked := map[string][]string{} // what was checked, by whom
		for name, sts := range s.statements(t) {
			for _, st := range sts {
				if !slices.Contains(st.Actions, "ec2:RunInstances") && !slices.Contains(st.Actions, "ec2:TerminateInstances") && !slices.Contains(st.Actions, "ec2:CreateTags") {
					continue
				}
				cond, _ := json.Marshal(st.Condition)
				c := string(cond)
				for _, r := range st.Resources {
					switch {
					case strings.HasSuffix(r, ":instance/*") && slices.Contains(st.Actions, "ec2:TerminateInstances"):
						checked["terminate"] = append(checked["terminate"], name)
						if !strings.Contains(c, `"aws:ResourceTag/`+fleet.TagDeployment+`":"`+s.stack.cfg.Deployment+`"`) {
							t.Errorf("%s: terminates untagged instances: %s", name, c)
						}
						// The deployment's tag anyone may put on an instance;
						// EC2's launch template tag only a launch from the
						// template.
						templates := map[string]bool{}
						for _, ref := range strs(st.Condition["StringEquals"].(map[string]any)["aws:ResourceTag/"+fleet.TagLaunchTemplateID]) {
							templates[ref] = true
						}
						for pool, lt := range s.stack.launchTemplates {
							if !templates["<Ref "+s.logicalIDOf(t, lt)+">"] || len(templates) != len(s.stack.launchTemplates) {
								t.Errorf("%s: terminates instances not launched from pool %s's template (or others'): %s", name, pool, c)
							}
						}
					case strings.HasSuffix(r, ":instance/*") && slices.Contains(st.Actions, "ec2:RunInstances"):
						checked["launch"] = append(checked["launch"], name)
						for _, want := range []string{`"aws:RequestTag/` + fleet.TagDeployment + `":"` + s.stack.cfg.Deployment + `"`, `"ec2:MetadataHttpTokens":"required"`, `"ec2:LaunchTemplate"`} {
							if !strings.Contains(c, want) {
								t.Errorf("%s: launches instances without %s: %s", name, want, c)
							}
						}
					case slices.Contains(st.Actions, "ec2:RunInstances") && (strings.Contains(r, ":subnet/") || strings.Contains(r, ":network-interface/") || strings.Contains(r, ":security-group/")):
						checked["network"] = append(checked["network"], name)
						vpc := "<?" // the VPC's ARN, a join around its id
						if arn, ok := st.Condition["ArnEquals"].(map[string]any); ok {
							vpc = flatten(arn["ec2:Vpc"])
						}
						if !strings.Contains(vpc, ":vpc/<Ref "+s.logicalIDOf(t, s.stack.vpc)+">") {
							t.Errorf("%s: launches into %s outside the deployment's VPC: %s", name, r, c)
						}
						if strings.HasSuffix(r, ":security-group/*") {
							t.Errorf("%s: launches with any security group", name)
						}
					case strings.HasSuffix(r, ":volume/*") && slices.Contains(st.Actions, "ec2:RunInstances"):
						checked["volume"] = append(checked["volume"], name)
						if !strings.Contains(c, `"ec2:Encrypted":"true"`) {
							t.Errorf("%s: launches unencrypted volumes: %s", name, c)
						}
					case slices.Contains(st.Actions, "ec2:CreateTags"):
						checked["tags"] = append(checked["tags"], name)
						if !strings.Contains(c, `"ec2:CreateAction":"RunInstances"`) {
							t.Errorf("%s: tags outside a launch: %s", name, c)
						}
					}
				}
			}
		}
		launchers := []string{statemachine.Init, statemachine.Refill}
		for what, want := range map[string][]string{
			"launch": launchers, "volume": launchers, "tags": launchers, "network": launchers,
			"terminate": {statemachine.Cleanup, statemachine.Init, statemachine.Refill},
		} {
			got := checked[what]
			slices.Sort(got)
			got = slices.Compact(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("%s statements checked for %v, want %v", what, got, want)
			}
		}
	})

	t.Run("security groups: the agent's port from the functions only, nothing from anywhere", func(t *testing.T) {
		var ingress []map[string]any
		for _, sg := range s.ofType("AWS::EC2::SecurityGroup") {
			rules, _ := sg.Properties["SecurityGroupIngress"].([]any)
			for _, r := range rules {
				ingress = append(ingress, r.(map[string]any))
			}
		}
		for _, r := range s.ofType("AWS::EC2::SecurityGroupIngress") {
			ingress = append(ingress, r.Properties)
		}
		for _, r := range ingress {
			if r["CidrIp"] != nil || r["CidrIpv6"] != nil {
				t.Errorf("ingress from an address range: %v", r)
			}
		}
		vm := s.logicalIDOf(t, s.stack.vmSG)
		functions := s.logicalIDOf(t, s.stack.functionsSG)
		var toVM []string
		for _, r := range ingress {
			if flatten(r["GroupId"]) == "<"+vm+".GroupId>" {
				toVM = append(toVM, fmt.Sprintf("%v %v-%v from %s", r["IpProtocol"], r["FromPort"], r["ToPort"], flatten(r["SourceSecurityGroupId"])))
			}
		}
		if want := fmt.Sprintf("tcp %d-%d from <%s.GroupId>", agentPort, agentPort, functions); !slices.Equal(toVM, []string{want}) {
			t.Errorf("the VMs admit %v, want only %s", toVM, want)
		}
	})

	t.Run("launch templates of both platforms", func(t *testing.T) {
		templates := s.ofType("AWS::EC2::LaunchTemplate")
		vmRole := s.logicalIDOf(t, s.stack.vmRole)
		byName := map[string]map[string]any{}
		for _, lt := range templates {
			byName[lt.Properties["LaunchTemplateName"].(string)] = lt.Properties["LaunchTemplateData"].(map[string]any)
		}
		for _, p := range s.stack.cfg.pools() {
			data, ok := byName[s.stack.name(p.Name)]
			if !ok {
				t.Errorf("pool %s (%s) has no launch template", p.Name, p.OS)
				continue
			}
			md, _ := data["MetadataOptions"].(map[string]any)
			if md["HttpTokens"] != "required" {
				t.Errorf("pool %s: IMDSv2 not required: %v", p.Name, md)
			}
			if data["InstanceInitiatedShutdownBehavior"] != "terminate" {
				t.Errorf("pool %s: shutdown %v", p.Name, data["InstanceInitiatedShutdownBehavior"])
			}
			if _, ok := data["BlockDeviceMappings"]; ok {
				t.Errorf("pool %s: block devices in the template would be merged with the image's root by name", p.Name)
			}
			if sgs := strs(data["SecurityGroupIds"]); !slices.Equal(sgs, []string{"<" + s.logicalIDOf(t, s.stack.vmSG) + ".GroupId>"}) {
				t.Errorf("pool %s: security groups %v", p.Name, sgs)
			}
			ip, _ := data["IamInstanceProfile"].(map[string]any)
			if got := flatten(ip["Arn"]); !strings.Contains(got, "VMInstanceProfile") {
				t.Errorf("pool %s: instance profile %s", p.Name, got)
			}
		}
		if len(byName) != len(s.stack.cfg.pools()) {
			t.Errorf("%d templates for %d pools", len(byName), len(s.stack.cfg.pools()))
		}
		oses := map[string]bool{}
		for _, p := range s.stack.cfg.pools() {
			oses[p.OS] = true
		}
		if !oses["linux"] || !oses["windows"] {
			t.Errorf("the example pools cover %v: want both platforms", oses)
		}
		// The VMs' role may do nothing.
		for _, p := range s.ofType("AWS::IAM::Policy") {
			for _, r := range strs(p.Properties["Roles"]) {
				if r == "<Ref "+vmRole+">" {
					t.Errorf("the VM role has a policy: %v", p.Properties)
				}
			}
		}
		if arns := s.resources[vmRole].Properties["ManagedPolicyArns"]; arns != nil {
			t.Errorf("the VM role has managed policies %v", arns)
		}
	})

	t.Run("data: encrypted, point-in-time recovery, TLS only", func(t *testing.T) {
		{
			_, tbl := s.one(t, "AWS::DynamoDB::Table")
			sse, _ := tbl.Properties["SSESpecification"].(map[string]any)
			pitr, _ := tbl.Properties["PointInTimeRecoverySpecification"].(map[string]any)
			if sse["SSEEnabled"] != true || pitr["PointInTimeRecoveryEnabled"] != true {
				t.Errorf("table: sse %v, pitr %v", sse, pitr)
			}
			ttl, _ := tbl.Properties["TimeToLiveSpecification"].(map[string]any)
			if ttl["AttributeName"] != ddb.TTLAttribute {
				t.Errorf("table TTL %v", ttl)
			}
			gsis, _ := json.Marshal(tbl.Properties["GlobalSecondaryIndexes"])
			if !strings.Contains(string(gsis), `"IndexName":"`+ddb.IdleIndex+`"`) {
				t.Errorf("no idle index: %s", gsis)
			}
		}
		{
			_, b := s.one(t, "AWS::S3::Bucket")
			enc, _ := json.Marshal(b.Properties["BucketEncryption"])
			life, _ := json.Marshal(b.Properties["LifecycleConfiguration"])
			if !strings.Contains(string(enc), "AES256") || !strings.Contains(string(life), `"ExpirationInDays":30`) {
				t.Errorf("bucket: encryption %s, lifecycle %s", enc, life)
			}
		}
		var tlsOnly bool
		for _, p := range s.ofType("AWS::S3::BucketPolicy") {
			doc, _ := json.Marshal(p.Properties["PolicyDocument"])
			tlsOnly = tlsOnly || strings.Contains(string(doc), `"aws:SecureTransport":"false"`) && strings.Contains(string(doc), `"Effect":"Deny"`)
		}
		if !tlsOnly {
			t.Error("the step log bucket admits plain HTTP")
		}
	})

	t.Run("the state machine file, every placeholder resolved to its function", func(t *testing.T) {
		fns := s.functionsByName(t)
		{
			_, sm := s.one(t, "AWS::StepFunctions::StateMachine")
			def := flatten(sm.Properties["DefinitionString"])
			if strings.Contains(def, "${") {
				t.Errorf("unresolved placeholders in %s", def)
			}
			var asl struct {
				States map[string]struct {
					Type     string `json:"Type"`
					Resource string `json:"Resource"`
				} `json:"States"`
			}
			if err := json.Unmarshal([]byte(def), &asl); err != nil {
				t.Fatalf("definition: %v", err)
			}
			tasks := 0
			for name, st := range asl.States {
				if st.Type != "Task" {
					continue
				}
				tasks++
				fn := strings.ToLower(strings.TrimSuffix(name, "Group"))
				if name == "RunGroup" {
					fn = statemachine.RunGroup
				}
				if want := "<" + fns[fn] + ".Arn>"; st.Resource != want {
					t.Errorf("task %s invokes %s, want %s", name, st.Resource, want)
				}
			}
			if tasks != 3 {
				t.Errorf("%d tasks", tasks)
			}
			logs, _ := sm.Properties["LoggingConfiguration"].(map[string]any)
			tracing, _ := sm.Properties["TracingConfiguration"].(map[string]any)
			// Errors only, without execution data (inputs and outputs).
			if logs["Level"] != "ERROR" || logs["IncludeExecutionData"] != false || tracing["Enabled"] != true {
				t.Errorf("logging %v, tracing %v", logs, tracing)
			}
			if sm.Properties["StateMachineName"] != s.stack.name("stage") {
				t.Errorf("state machine name %v", sm.Properties["StateMachineName"])
			}
		}
	})

	t.Run("every function: al2023 on arm64 in the VPC, its environment pointing at real resources", func(t *testing.T) {
		fns := s.functionsByName(t)
		sm, _ := s.one(t, "AWS::StepFunctions::StateMachine")
		smName := s.resources[sm].Properties["StateMachineName"].(string)
		table := s.logicalIDOf(t, s.stack.table)
		bucket := s.logicalIDOf(t, s.stack.logBucket)
		vmSG := s.logicalIDOf(t, s.stack.vmSG)
		fnSG := s.logicalIDOf(t, s.stack.functionsSG)
		var subnets []string
		for id, r := range s.ofType("AWS::EC2::Subnet") {
			if r.Properties["MapPublicIpOnLaunch"] != true {
				subnets = append(subnets, "<Ref "+id+">")
			}
		}
		slices.Sort(subnets)
		for _, f := range statemachine.Functions {
			r := s.resources[fns[f.Name]]
			p := r.Properties
			if p["Runtime"] != "provided.al2023" || !slices.Equal(strs(p["Architectures"]), []string{"arm64"}) || p["Handler"] != "bootstrap" {
				t.Errorf("%s: runtime %v %v", f.Name, p["Runtime"], p["Architectures"])
			}
			// Cleanup and refill always run; the API's long-polls are capped
			// (200 by default); init and step share the rest.
			wantReserved := map[string]any{statemachine.Cleanup: 20.0, statemachine.Refill: 2.0, statemachine.API: 200.0}[f.Name]
			if p["ReservedConcurrentExecutions"] != wantReserved {
				t.Errorf("%s: reserved concurrency %v, want %v", f.Name, p["ReservedConcurrentExecutions"], wantReserved)
			}
			if env := p["Environment"].(map[string]any)["Variables"].(map[string]any); env[deploy.EnvMaxActiveStages] != "50" ||
				env[deploy.EnvMaxStageTimeout] != "48h0m0s" || env[deploy.EnvMaxIdleTimeout] != "2h0m0s" {
				t.Errorf("%s: max active stages %v, stage timeout %v, idle timeout %v", f.Name, env[deploy.EnvMaxActiveStages], env[deploy.EnvMaxStageTimeout], env[deploy.EnvMaxIdleTimeout])
			}
			if p["Timeout"] != f.Timeout.Seconds() || p["MemorySize"] != float64(f.MemoryMB) {
				t.Errorf("%s: timeout %v, memory %v; want statemachine.Functions' %v, %d", f.Name, p["Timeout"], p["MemorySize"], f.Timeout, f.MemoryMB)
			}
			vpc, _ := p["VpcConfig"].(map[string]any)
			got := strs(vpc["SubnetIds"])
			slices.Sort(got)
			if !slices.Equal(got, subnets) || !slices.Equal(strs(vpc["SecurityGroupIds"]), []string{"<" + fnSG + ".GroupId>"}) {
				t.Errorf("%s: vpc %v, want subnets %v", f.Name, vpc, subnets)
			}
			env := map[string]string{}
			vars, _ := p["Environment"].(map[string]any)["Variables"].(map[string]any)
			for k, v := range vars {
				env[k] = flatten(v)
			}
			want := map[string]string{
				deploy.EnvDeployment:       s.stack.cfg.Deployment,
				deploy.EnvTable:            "<Ref " + table + ">",
				deploy.EnvCAKeyID:          "<" + s.logicalIDOf(t, s.stack.caKey) + ".Arn>",
				deploy.EnvSecretsKeyID:     "<" + s.logicalIDOf(t, s.stack.secretsKey) + ".Arn>",
				deploy.EnvStateMachineARN:  "arn:<Ref AWS::Partition>:states:eu-central-1:123456789012:stateMachine:" + smName,
				deploy.EnvCleanupFunction:  s.resources[fns[statemachine.Cleanup]].Properties["FunctionName"].(string),
				deploy.EnvRefillFunction:   s.resources[fns[statemachine.Refill]].Properties["FunctionName"].(string),
				deploy.EnvLogBucket:        "<Ref " + bucket + ">",
				deploy.EnvPoolsFile:        "/opt/pools.yaml",
				deploy.EnvSubnets:          strings.Join(strs(vpc["SubnetIds"]), ","),
				deploy.EnvVMSecurityGroups: "<" + vmSG + ".GroupId>",
			}
			for k, v := range want {
				if env[k] != v {
					t.Errorf("%s: %s = %q, want %q", f.Name, k, env[k], v)
				}
			}
			// What the function reads of the rest parses, and names the
			// deployment's launch templates and agents.
			fl, err := deploy.FleetFromEnv(func(k string) string { return env[k] })
			if err != nil {
				t.Errorf("%s: %v", f.Name, err)
			}
			for _, p := range s.stack.cfg.pools() {
				if want := "<Ref " + s.logicalIDOf(t, s.stack.launchTemplates[p.Name]) + ">"; fl.LaunchTemplates[p.Name] != want {
					t.Errorf("%s: pool %s's launch template %q", f.Name, p.Name, fl.LaunchTemplates[p.Name])
				}
				if a := fl.Agents[p.OS+"/"+p.Arch]; !strings.HasPrefix(a.Bucket, "cdk-") || a.Key == "" {
					t.Errorf("%s: pool %s's agent %+v", f.Name, p.Name, a)
				}
			}
			if len(p["Layers"].([]any)) != 1 {
				t.Errorf("%s: layers %v (want the pools file's)", f.Name, p["Layers"])
			}
		}
	})

	t.Run("the API: a method per OpenAPI operation, IAM on each, validated, logged", func(t *testing.T) {
		want := openAPIOperations(t)
		methods := s.ofType("AWS::ApiGateway::Method")
		got := map[string]string{}
		for id, m := range methods {
			p := m.Properties
			op := fmt.Sprintf("%v %s", p["HttpMethod"], s.resourcePath(t, p["ResourceId"]))
			got[op], _ = p["OperationName"].(string)
			if p["AuthorizationType"] != "AWS_IAM" || p["RequestValidatorId"] == nil {
				t.Errorf("method %s (%s): authorization %v, validator %v", id, op, p["AuthorizationType"], p["RequestValidatorId"])
			}
			models, _ := p["RequestModels"].(map[string]any)
			if takesBody := op == "POST /v1/stages" || op == "POST /v1/stages/{id}/groups"; takesBody != (models["application/json"] != nil) {
				t.Errorf("%s: request models %v", op, models)
			}
			if op == "GET /v1/stages/{id}/steps/{step}" {
				params, _ := json.Marshal(p["RequestParameters"])
				if string(params) != `{"method.request.path.id":true,"method.request.path.step":true,"method.request.querystring.wait":false}` {
					t.Errorf("%s: parameters %s", op, params)
				}
			}
		}
		if !maps.Equal(got, want) {
			t.Errorf("methods %v\nwant the document's operations %v", got, want)
		}
		{
			_, v := s.one(t, "AWS::ApiGateway::RequestValidator")
			if v.Properties["ValidateRequestBody"] != true || v.Properties["ValidateRequestParameters"] != true {
				t.Errorf("validator %v", v.Properties)
			}
		}
		{
			_, st := s.one(t, "AWS::ApiGateway::Stage")
			if st.Properties["AccessLogSetting"] == nil || st.Properties["TracingEnabled"] != true || st.Properties["StageName"] != "api" {
				t.Errorf("stage %v: access logs %v, tracing %v", st.Properties["StageName"], st.Properties["AccessLogSetting"], st.Properties["TracingEnabled"])
			}
			settings, _ := json.Marshal(st.Properties["MethodSettings"])
			if strings.Contains(string(settings), `"DataTraceEnabled":true`) {
				t.Error("the API logs request bodies, which carry secrets")
			}
		}
		responses := s.ofType("AWS::ApiGateway::GatewayResponse")
		if len(responses) != 3 {
			t.Errorf("%d gateway responses, want the bad body's, the bad parameters' and the throttled", len(responses))
		}
		for _, r := range responses {
			tmpl, _ := r.Properties["ResponseTemplates"].(map[string]any)
			var e struct {
				Error struct{ Code, Message string } `json:"error"`
			}
			err := json.Unmarshal([]byte(tmpl["application/json"].(string)), &e)
			switch r.Properties["ResponseType"] {
			case "THROTTLED":
				// A throttled call is a 429 that names the limit.
				headers, _ := r.Properties["ResponseParameters"].(map[string]any)
				if err != nil || r.Properties["StatusCode"] != "429" || e.Error.Code != "throttled" || !strings.Contains(e.Error.Message, "200 requests a second") ||
					headers["gatewayresponse.header.Retry-After"] != "'1'" {
					t.Errorf("throttled: %v %v", r.Properties, err)
				}
			default:
				if err != nil || e.Error.Code != stage.CodeInvalid || e.Error.Message == "" {
					t.Errorf("gateway response %v: not the API's error shape: %v", r.Properties["ResponseType"], err)
				}
			}
		}
	})

	t.Run("the schedule refills every minute; failed executions are released", func(t *testing.T) {
		fns := s.functionsByName(t)
		{
			_, sch := s.one(t, "AWS::Scheduler::Schedule")
			target, _ := sch.Properties["Target"].(map[string]any)
			if sch.Properties["ScheduleExpression"] != "rate(1 minute)" || flatten(target["Arn"]) != "<"+fns[statemachine.Refill]+".Arn>" || target["Input"] != "{}" {
				t.Errorf("schedule %v", sch.Properties)
			}
		}
		rules := s.ofType("AWS::Events::Rule")
		if len(rules) != 1 {
			t.Fatalf("%d rules", len(rules))
		}
		for _, r := range rules {
			pattern, _ := json.Marshal(r.Properties["EventPattern"])
			for _, want := range []string{`"FAILED"`, `"TIMED_OUT"`, `"ABORTED"`, `"aws.states"`, `"Step Functions Execution Status Change"`} {
				if !strings.Contains(string(pattern), want) {
					t.Errorf("rule pattern %s lacks %s", pattern, want)
				}
			}
			targets, _ := r.Properties["Targets"].([]any)
			if len(targets) != 1 || flatten(targets[0].(map[string]any)["Arn"]) != "<"+fns[statemachine.Cleanup]+".Arn>" {
				t.Errorf("rule targets %v", targets)
			}
		}
	})

	t.Run("alarms watch exactly what the functions emit", func(t *testing.T) {
		emitted := emittedMetrics(t)
		topicID, _ := s.one(t, "AWS::SNS::Topic")
		topic := "<Ref " + topicID + ">"
		type key struct{ metric, pool string }
		got := map[key]resource{}
		var other []string
		for _, a := range s.ofType("AWS::CloudWatch::Alarm") {
			p := a.Properties
			if !slices.Equal(strs(p["AlarmActions"]), []string{topic}) {
				t.Errorf("alarm %v notifies %v", p["AlarmName"], p["AlarmActions"])
			}
			if p["Namespace"] != metrics.Namespace {
				other = append(other, fmt.Sprintf("%v/%v", p["Namespace"], p["MetricName"]))
				continue
			}
			name := p["MetricName"].(string)
			if !emitted[name] {
				t.Errorf("alarm on %s, which no function emits", name)
			}
			dims := map[string]string{}
			for _, d := range p["Dimensions"].([]any) {
				m := d.(map[string]any)
				dims[m["Name"].(string)] = m["Value"].(string)
			}
			if len(dims) != 2 || dims[metrics.DimDeployment] != s.stack.cfg.Deployment || dims[metrics.DimPool] == "" {
				t.Errorf("alarm on %s: dimensions %v", name, dims)
			}
			got[key{name, dims[metrics.DimPool]}] = a
		}
		for _, p := range s.stack.cfg.pools() {
			for metric, missing := range map[string]string{
				metrics.IdleDeficit: "breaching", metrics.IdleVMs: "breaching", metrics.BootFailures: "notBreaching",
				metrics.OrphansTerminated: "notBreaching", metrics.ReleaseFailures: "notBreaching", metrics.LeaseWaitMs: "notBreaching",
			} {
				a, ok := got[key{metric, p.Name}]
				if !ok {
					t.Errorf("pool %s: no alarm on %s", p.Name, metric)
					continue
				}
				if a.Properties["TreatMissingData"] != missing {
					t.Errorf("pool %s, %s: missing data %v, want %s", p.Name, metric, a.Properties["TreatMissingData"], missing)
				}
			}
			lw := got[key{metrics.LeaseWaitMs, p.Name}].Properties
			if lw["ExtendedStatistic"] != "p90" || lw["Threshold"] != float64(s.stack.cfg.LeaseWaitTargetMs) {
				t.Errorf("pool %s: lease wait alarm %v %v", p.Name, lw["ExtendedStatistic"], lw["Threshold"])
			}
			if id := got[key{metrics.IdleDeficit, p.Name}].Properties; id["EvaluationPeriods"] != float64(s.stack.cfg.IdleDeficitMinutes) || id["Threshold"] != 0.0 {
				t.Errorf("pool %s: idle deficit alarm %v", p.Name, id)
			}
		}
		slices.Sort(other)
		want := []string{"AWS/States/ExecutionsFailed", "AWS/States/ExecutionsTimedOut"}
		for range statemachine.Functions {
			want = append(want, "AWS/Lambda/Errors")
		}
		slices.Sort(want)
		if !slices.Equal(other, want) {
			t.Errorf("other alarms %v, want %v", other, want)
		}
		var dashboard string
		{
			_, d := s.one(t, "AWS::CloudWatch::Dashboard")
			dashboard = flatten(d.Properties["DashboardBody"])
		}
		for _, m := range []string{metrics.IdleVMs, metrics.LeasedVMs, metrics.LeaseWaitMs, metrics.WarmHit, metrics.ColdStart} {
			if !strings.Contains(dashboard, `"`+m+`"`) {
				t.Errorf("the dashboard does not show %s", m)
			}
		}
	})

	t.Run("network: free gateway endpoints, no interface endpoints behind a NAT", func(t *testing.T) {
		var gateways, interfaces []string
		for _, e := range s.ofType("AWS::EC2::VPCEndpoint") {
			svc := flatten(e.Properties["ServiceName"])
			if e.Properties["VpcEndpointType"] == "Interface" {
				interfaces = append(interfaces, svc)
			} else {
				gateways = append(gateways, svc)
			}
		}
		if len(gateways) != 2 || len(interfaces) != 0 || len(s.ofType("AWS::EC2::NatGateway")) != 1 {
			t.Errorf("gateway endpoints %v, interface endpoints %v, %d NAT", gateways, interfaces, len(s.ofType("AWS::EC2::NatGateway")))
		}
	})
}

// logicalIDOf is the template id of a construct's resource.
func (s *synth) logicalIDOf(t *testing.T, c constructs.IConstruct) string {
	t.Helper()
	el, ok := c.Node().DefaultChild().(awscdk.CfnElement)
	if !ok {
		t.Fatalf("%s has no resource", *c.Node().Path())
	}
	return *s.stack.GetLogicalId(el)
}

// resourcePath is the path of an API Gateway resource, from its parents.
func (s *synth) resourcePath(t *testing.T, ref any) string {
	t.Helper()
	id := strings.TrimSuffix(strings.TrimPrefix(flatten(ref), "<Ref "), ">")
	if strings.HasSuffix(id, ".RootResourceId") {
		return ""
	}
	r, ok := s.resources[id]
	if !ok || r.Type != "AWS::ApiGateway::Resource" {
		t.Fatalf("resource %s", flatten(ref))
	}
	return s.resourcePath(t, r.Properties["ParentId"]) + "/" + r.Properties["PathPart"].(string)
}

// openAPIOperations are the API document's operations, "METHOD path" to
// operationId, as libopenapi reads it.
func openAPIOperations(t *testing.T) map[string]string {
	t.Helper()
	doc, err := libopenapi.NewDocument(stage.OpenAPI)
	if err != nil {
		t.Fatal(err)
	}
	model, err := doc.BuildV3Model()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for path, item := range model.Model.Paths.PathItems.FromOldest() {
		for method, op := range item.GetOperations().FromOldest() {
			out[strings.ToUpper(method)+" "+path] = op.OperationId
		}
	}
	if len(out) < 9 {
		t.Fatalf("only %d operations: %v", len(out), out)
	}
	return out
}

// emittedMetrics are the metric names the functions' packages emit: the
// constants of internal/metrics that internal/warm and internal/stage use.
func emittedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	fset := token.NewFileSet()
	values := map[string]string{}
	f, err := parser.ParseFile(fset, filepath.Join(root, "internal/metrics/metrics.go"), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	ast.Inspect(f, func(n ast.Node) bool {
		if v, ok := n.(*ast.ValueSpec); ok && len(v.Values) == 1 {
			if lit, ok := v.Values[0].(*ast.BasicLit); ok && lit.Kind == token.STRING {
				values[v.Names[0].Name], _ = strconv.Unquote(lit.Value)
			}
		}
		return true
	})
	used := map[string]bool{}
	for _, dir := range []string{"internal/warm", "internal/stage"} {
		files, _ := filepath.Glob(filepath.Join(root, dir, "*.go"))
		for _, file := range files {
			if strings.HasSuffix(file, "_test.go") {
				continue
			}
			f, err := parser.ParseFile(fset, file, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			ast.Inspect(f, func(n ast.Node) bool {
				if sel, ok := n.(*ast.SelectorExpr); ok {
					if x, ok := sel.X.(*ast.Ident); ok && x.Name == "metrics" {
						if v, ok := values[sel.Sel.Name]; ok {
							used[v] = true
						}
					}
				}
				return true
			})
		}
	}
	if !used[metrics.IdleDeficit] || !used[metrics.LeaseWaitMs] {
		t.Fatalf("found only %v: the scan is broken", used)
	}
	return used
}

func TestVPCWithoutNAT(t *testing.T) {
	s := synthesize(t, map[string]any{"natGateways": 0})
	if len(s.errors) > 0 {
		t.Errorf("cdk-nag:\n%s", strings.Join(s.errors, "\n"))
	}
	var interfaces []string
	for _, e := range s.ofType("AWS::EC2::VPCEndpoint") {
		if e.Properties["VpcEndpointType"] == "Interface" {
			interfaces = append(interfaces, flatten(e.Properties["ServiceName"]))
			if e.Properties["PrivateDnsEnabled"] != true {
				t.Errorf("endpoint %v without private DNS: the SDKs would not use it", e.Properties["ServiceName"])
			}
		}
	}
	slices.Sort(interfaces)
	var want []string
	for _, svc := range []string{"ec2", "kms", "lambda", "logs", "ssm", "states"} {
		want = append(want, "com.amazonaws.eu-central-1."+svc)
	}
	if !slices.Equal(interfaces, want) {
		t.Errorf("interface endpoints %v, want %v", interfaces, want)
	}
	if n := len(s.ofType("AWS::EC2::NatGateway")); n != 0 {
		t.Errorf("%d NAT gateways", n)
	}
	if n := len(s.ofType("AWS::EC2::InternetGateway")); n != 0 {
		t.Errorf("%d internet gateways in a VPC without NAT", n)
	}
}

func TestExistingVPC(t *testing.T) {
	s := synthesize(t, map[string]any{
		"vpcId":             "vpc-0a1b2c3d4e5f60000",
		"subnetIds":         "subnet-0a1b2c3d4e5f60001,subnet-0a1b2c3d4e5f60002",
		"availabilityZones": []any{"eu-central-1a", "eu-central-1b"},
		"routeTableIds":     "rtb-0a1b2c3d4e5f60003",
	})
	if len(s.errors) > 0 {
		t.Errorf("cdk-nag:\n%s", strings.Join(s.errors, "\n"))
	}
	if n := len(s.ofType("AWS::EC2::VPC")) + len(s.ofType("AWS::EC2::Subnet")) + len(s.ofType("AWS::EC2::NatGateway")); n != 0 {
		t.Errorf("%d VPC resources made in an existing VPC", n)
	}
	if n := len(s.ofType("AWS::Lambda::Function")); n != len(statemachine.Functions) {
		t.Errorf("%d functions", n)
	}
	for _, f := range s.ofType("AWS::Lambda::Function") {
		vpc, _ := f.Properties["VpcConfig"].(map[string]any)
		if got := strs(vpc["SubnetIds"]); !slices.Equal(got, []string{"subnet-0a1b2c3d4e5f60001", "subnet-0a1b2c3d4e5f60002"}) {
			t.Errorf("%v: subnets %v", f.Properties["FunctionName"], got)
		}
	}
	if n := len(s.ofType("AWS::EC2::VPCEndpoint")); n != 2 {
		t.Errorf("%d endpoints, want the two gateway endpoints", n)
	}
	for _, e := range s.ofType("AWS::EC2::VPCEndpoint") {
		if e.Properties["VpcId"] != "vpc-0a1b2c3d4e5f60000" || !slices.Equal(strs(e.Properties["RouteTableIds"]), []string{"rtb-0a1b2c3d4e5f60003"}) {
			t.Errorf("endpoint %v", e.Properties)
		}
	}
	for _, sg := range s.ofType("AWS::EC2::SecurityGroup") {
		if sg.Properties["VpcId"] != "vpc-0a1b2c3d4e5f60000" {
			t.Errorf("security group in %v", sg.Properties["VpcId"])
		}
	}
}

// Named principals, of this account and another, are the only ones the
// API takes: the other account is allowed in the resource policy, and
// everyone else denied, whatever their own policies say.
func TestAPIPrincipals(t *testing.T) {
	named := []string{"arn:aws:iam::123456789012:role/ci-delegate", "arn:aws:iam::210987654321:role/team-*"}
	operators := "arn:aws:iam::123456789012:role/platform/*"
	s := synthesize(t, map[string]any{"apiPrincipals": strings.Join(named, ","), "operators": operators})
	for name, id := range s.functionsByName(t) {
		env, _ := s.resources[id].Properties["Environment"].(map[string]any)
		vars, _ := env["Variables"].(map[string]any)
		if vars[deploy.EnvOperators] != operators {
			t.Errorf("%s: operators %v", name, vars[deploy.EnvOperators])
		}
	}
	_, api := s.one(t, "AWS::ApiGateway::RestApi")
	doc, _ := api.Properties["Policy"].(map[string]any)
	var allowed []string
	var denied bool
	for _, raw := range doc["Statement"].([]any) {
		st := raw.(map[string]any)
		switch st["Effect"] {
		case "Allow":
			for _, p := range strs(st["Principal"].(map[string]any)["AWS"]) {
				allowed = append(allowed, regexp.MustCompile(`iam::([0-9]{12}):root$`).FindStringSubmatch(p)[1])
			}
		case "Deny":
			cond, _ := st["Condition"].(map[string]any)
			notLike, _ := cond["ArnNotLike"].(map[string]any)
			denied = st["Principal"] == "*" || reflect.DeepEqual(st["Principal"], map[string]any{"AWS": "*"})
			denied = denied && slices.Equal(strs(notLike["aws:PrincipalArn"]), named)
		}
	}
	slices.Sort(allowed)
	if !slices.Equal(allowed, []string{"123456789012", "210987654321"}) || !denied {
		t.Errorf("accounts allowed %v, others denied %v: %v", allowed, denied, doc)
	}
}

func TestBadContextNamesEveryProblem(t *testing.T) {
	pools := filepath.Join(t.TempDir(), "pools.yaml")
	if err := os.WriteFile(pools, []byte(`pools:
  - {name: Bad_Name, os: linux, arch: arm64, instance_types: [c7g.large], ami: ami-0123456789abcdef0, max_instances: 2}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := map[string]any{
		"deployment": "Prod", "account": "12345", "region": "mars", "pools": pools,
		"subnetIds": "subnet-0a1b2c3d4e5f60001", "natGateways": "four", "interfaceEndpoints": "maybe",
		"alarmEmail": "ops", "logRetentionDays": 42, "leaseWaitTargetMs": 5, "apiPrincipals": "arn:aws:iam::123456789012:role/ci,ci-delegate", "maxIdleTimeout": "forever",
	}
	_, err := LoadConfig(func(k string) any { return ctx[k] }, root)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		"context deployment:", "context account:", "context region:", "context subnetIds: only with vpcId",
		"context natGateways:", "context interfaceEndpoints:", "context alarmEmail:", "context logRetentionDays: 42",
		"context leaseWaitTargetMs:", "pool Bad_Name: name", `context apiPrincipals: "ci-delegate" is not an IAM role or user ARN`, "context maxIdleTimeout:",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %q:\n%v", want, err)
		}
	}

	if err := os.WriteFile(pools, []byte(`pools:
  - {name: own-profile, os: linux, arch: arm64, instance_types: [c7g.large], ami: ami-0123456789abcdef0,
     max_instances: 2, iam_instance_profile: my-profile}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx = map[string]any{"account": "123456789012", "region": "eu-central-1", "pools": pools}
	if _, err := LoadConfig(func(k string) any { return ctx[k] }, root); err == nil || !strings.Contains(err.Error(), "pool own-profile: iam_instance_profile") {
		t.Errorf("a pool with its own instance profile: err = %v", err)
	}

	ctx = map[string]any{"account": "123456789012", "region": "eu-central-1", "vpcId": "vpc-0a1b2c3d4e5f60000",
		"subnetIds": "subnet-0a1b2c3d4e5f60001,subnet-0a1b2c3d4e5f60002", "availabilityZones": "eu-central-1a"}
	_, err = LoadConfig(func(k string) any { return ctx[k] }, root)
	for _, want := range []string{"context availabilityZones: 1 zones for 2 subnets", "context routeTableIds:"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("an existing VPC half described: err = %v, want %q", err, want)
		}
	}
}

func TestPoolsShapeTheLaunchPolicy(t *testing.T) {
	pools := filepath.Join(t.TempDir(), "pools.yaml")
	if err := os.WriteFile(pools, []byte(`pools:
  - {name: keyed, os: linux, arch: arm64, instance_types: [c7g.large], ami: /acme/images/ci-arm64,
     max_instances: 2, key_pair: ops}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	s := synthesize(t, map[string]any{"pools": pools})
	if len(s.errors) > 0 {
		t.Errorf("cdk-nag:\n%s", strings.Join(s.errors, "\n"))
	}
	for _, name := range []string{statemachine.Init, statemachine.Refill} {
		var resources []string
		for _, st := range s.statements(t)[name] {
			if slices.Contains(st.Actions, "ec2:RunInstances") || slices.Contains(st.Actions, "ssm:GetParameter") {
				resources = append(resources, st.Resources...)
			}
		}
		for _, want := range []string{
			"arn:<Ref AWS::Partition>:ec2:eu-central-1:123456789012:key-pair/ops",
			"arn:<Ref AWS::Partition>:ssm:eu-central-1:123456789012:parameter/acme/images/ci-arm64",
		} {
			if !slices.Contains(resources, want) {
				t.Errorf("%s may not launch with %s: %v", name, want, resources)
			}
		}
		for _, r := range resources {
			if strings.Contains(r, "spot-instances-request") || strings.HasSuffix(r, "key-pair/*") {
				t.Errorf("%s: %s, which no pool needs", name, r)
			}
		}
	}
	if len(s.ofType("AWS::EC2::LaunchTemplate")) != 1 || len(s.ofType("AWS::S3::Bucket")) != 1 {
		t.Error("one pool, one launch template, one bucket")
	}
}
