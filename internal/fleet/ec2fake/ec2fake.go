// Package ec2fake is an EC2 stand-in for tests: an HTTP server that speaks
// EC2's Query protocol for the calls Slipway makes (RunInstances,
// TerminateInstances, DescribeInstances, DescribeImages), answers like EC2,
// error codes included, and checks every request it gets: an invalid one is
// answered with an error and recorded in Problems, so a test sees it.
//
// No EC2 emulator can be had; this is the one fake the project keeps, for
// the one dependency with no local stand-in.
package ec2fake

import (
	"encoding/base64"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
)

// Tags every instance must carry (fleet's tag names).
var RequiredTags = []string{"slipway:deployment", "slipway:pool", "slipway:launch-id"}

// Instance is one fake instance.
type Instance struct {
	ID, ImageID, InstanceType, SubnetID, PrivateIP, ClientToken string
	State                                                       string
	Market                                                      string // spot or on-demand
	Tags                                                        map[string]string
	UserData                                                    []byte
	LaunchTime, StateTime                                       time.Time
	HTTPTokens                                                  string
	RootVolumeSize                                              int
	RootVolumeEncrypted                                         bool
	// LaunchTemplate (id or name, @version) and SecurityGroups are as
	// RunInstances named them.
	LaunchTemplate string
	SecurityGroups []string
}

// RunRequest is what RunInstances asked for, for Fail to judge.
type RunRequest struct {
	ImageID, InstanceType, SubnetID, Market, ClientToken string
}

// Server is the fake.
type Server struct {
	*httptest.Server

	// Fail, when set, may return an EC2 error code for a RunInstances
	// request (InsufficientInstanceCapacity, Unsupported, ...).
	Fail func(RunRequest) string
	// RunDelay is how long RunInstances takes.
	RunDelay time.Duration
	// Images maps image ids to their root device name (default: any ami- id
	// exists, with /dev/xvda).
	Images map[string]string
	// Parameters are SSM parameters (an AMI's path to its id).
	Parameters map[string]string

	mu        sync.Mutex
	instances map[string]*Instance
	tokens    map[string]string // client token -> instance id
	calls     map[string]int
	problems  []string
	nextID    int
}

// EC2Client returns an EC2 client of the fake with static credentials.
func (s *Server) EC2Client() *ec2.Client {
	return ec2.NewFromConfig(s.config(), func(o *ec2.Options) { o.BaseEndpoint = aws.String(s.URL) })
}

// SSMClient returns an SSM client of the fake.
func (s *Server) SSMClient() *ssm.Client {
	return ssm.NewFromConfig(s.config(), func(o *ssm.Options) { o.BaseEndpoint = aws.String(s.URL) })
}

func (s *Server) config() aws.Config {
	return aws.Config{
		Region:      "us-east-1",
		Credentials: credentials.NewStaticCredentialsProvider("fake", "fake", ""),
		Retryer:     func() aws.Retryer { return retry.NewStandard() },
	}
}

// New starts a fake on 127.0.0.1.
func New() *Server {
	s := &Server{instances: map[string]*Instance{}, tokens: map[string]string{}, calls: map[string]int{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// Instances returns a copy of every instance.
func (s *Server) Instances() []Instance {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Instance, 0, len(s.instances))
	for _, in := range s.instances {
		c := *in
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Calls returns how many times each action was called.
func (s *Server) Calls(action string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[action]
}

// Problems lists the invalid requests the fake refused.
func (s *Server) Problems() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.problems...)
}

// SetState forces an instance's state (to simulate EC2 ending it).
func (s *Server) SetState(id, state string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if in, ok := s.instances[id]; ok {
		in.State, in.StateTime = state, time.Now()
	}
}

// AddInstance puts an instance into the fake as if launched outside the test
// (an orphan, say).
func (s *Server) AddInstance(in Instance) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextID++
	in.ID = fmt.Sprintf("i-%017x", s.nextID)
	if in.State == "" {
		in.State = "running"
	}
	if in.LaunchTime.IsZero() {
		in.LaunchTime = time.Now()
	}
	s.instances[in.ID] = &in
	return in.ID
}

const xmlns = "http://ec2.amazonaws.com/doc/2016-11-15/"

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-Amz-Target") == "AmazonSSM.GetParameter" {
		s.getParameter(w, r)
		return
	}
	if err := r.ParseForm(); err != nil {
		writeError(w, http.StatusBadRequest, "MalformedQueryString", err.Error())
		return
	}
	form := r.PostForm
	action := form.Get("Action")
	s.mu.Lock()
	s.calls[action]++
	s.mu.Unlock()
	if form.Get("Version") == "" {
		s.refuse(w, action, "no Version")
		return
	}
	if !strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 ") {
		s.refuse(w, action, "request not signed with SigV4")
		return
	}
	switch action {
	case "RunInstances":
		s.runInstances(w, form)
	case "TerminateInstances":
		s.terminateInstances(w, form)
	case "DescribeInstances":
		s.describeInstances(w, form)
	case "DescribeImages":
		s.describeImages(w, form)
	default:
		writeError(w, http.StatusBadRequest, "InvalidAction", "The action "+action+" is not valid for this web service.")
	}
}

func (s *Server) refuse(w http.ResponseWriter, action, problem string) {
	s.mu.Lock()
	s.problems = append(s.problems, action+": "+problem)
	s.mu.Unlock()
	writeError(w, http.StatusBadRequest, "InvalidParameterValue", problem)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "text/xml")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>%s</Code><Message>%s</Message></Error></Errors><RequestID>fake-request</RequestID></Response>`,
		code, xmlEscape(msg))
}

func xmlEscape(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// list reads prefix.1, prefix.2, ... from a form.
func list(form url.Values, prefix string) []string {
	var out []string
	for i := 1; ; i++ {
		v, ok := form[prefix+"."+strconv.Itoa(i)]
		if !ok {
			return out
		}
		out = append(out, v[0])
	}
}

// serverErrors are the codes EC2 answers with a 5xx status.
var serverErrors = map[string]bool{
	"InsufficientInstanceCapacity": true, "InsufficientCapacity": true, "InsufficientHostCapacity": true,
	"InternalError": true, "Unavailable": true,
}

func (s *Server) runInstances(w http.ResponseWriter, form url.Values) {
	req := RunRequest{
		ImageID: form.Get("ImageId"), InstanceType: form.Get("InstanceType"), SubnetID: form.Get("SubnetId"),
		Market: "on-demand", ClientToken: form.Get("ClientToken"),
	}
	if form.Get("InstanceMarketOptions.MarketType") == "spot" {
		req.Market = "spot"
	}
	var problems []string
	if form.Get("MinCount") != "1" || form.Get("MaxCount") != "1" {
		problems = append(problems, "want MinCount=MaxCount=1: one RunInstances per VM")
	}
	if req.ClientToken == "" || len(req.ClientToken) > 64 {
		problems = append(problems, fmt.Sprintf("client token %q: want 1-64 characters", req.ClientToken))
	}
	if req.ImageID == "" && form.Get("LaunchTemplate.LaunchTemplateId") == "" && form.Get("LaunchTemplate.LaunchTemplateName") == "" {
		problems = append(problems, "no ImageId and no launch template")
	}
	if req.InstanceType == "" || req.SubnetID == "" {
		problems = append(problems, "want InstanceType and SubnetId")
	}
	if form.Get("MetadataOptions.HttpTokens") != "required" {
		problems = append(problems, "IMDSv2 not required (MetadataOptions.HttpTokens)")
	}
	userData, err := base64.StdEncoding.DecodeString(form.Get("UserData"))
	if err != nil || len(userData) == 0 {
		problems = append(problems, "UserData missing or not base64")
	} else if len(userData) > 16<<10 {
		problems = append(problems, "UserData over 16 KiB")
	}
	tags := map[string]string{}
	tagged := map[string]bool{}
	for i := 1; form.Get("TagSpecification."+strconv.Itoa(i)+".ResourceType") != ""; i++ {
		p := "TagSpecification." + strconv.Itoa(i)
		tagged[form.Get(p+".ResourceType")] = true
		for j := 1; form.Get(p+".Tag."+strconv.Itoa(j)+".Key") != ""; j++ {
			tags[form.Get(p+".Tag."+strconv.Itoa(j)+".Key")] = form.Get(p + ".Tag." + strconv.Itoa(j) + ".Value")
		}
	}
	for k := range tags {
		if strings.HasPrefix(strings.ToLower(k), "aws:") {
			// EC2 refuses it: the prefix is AWS's own.
			problems = append(problems, "tag "+k+": the aws: prefix is reserved")
		}
	}
	for _, t := range RequiredTags {
		if tags[t] == "" {
			problems = append(problems, "instance tag "+t+" missing")
		}
	}
	if !tagged["instance"] || !tagged["volume"] {
		problems = append(problems, "want tags on the instance and its volumes")
	}
	if len(list(form, "SecurityGroupId")) == 0 {
		problems = append(problems, "no security group")
	}
	size, _ := strconv.Atoi(form.Get("BlockDeviceMapping.1.Ebs.VolumeSize"))
	encrypted := form.Get("BlockDeviceMapping.1.Ebs.Encrypted") == "true"
	if !encrypted {
		problems = append(problems, "root volume not encrypted")
	}
	if len(problems) > 0 {
		s.refuse(w, "RunInstances", strings.Join(problems, "; "))
		return
	}
	if s.RunDelay > 0 {
		time.Sleep(s.RunDelay)
	}

	s.mu.Lock()
	if id, ok := s.tokens[req.ClientToken]; ok {
		in := s.instances[id]
		if in.InstanceType != req.InstanceType || in.SubnetID != req.SubnetID {
			s.mu.Unlock()
			writeError(w, http.StatusBadRequest, "IdempotentParameterMismatch", "The client token has been used with different parameters.")
			return
		}
		body := instanceXML(in)
		s.mu.Unlock()
		writeRun(w, body)
		return
	}
	s.mu.Unlock()
	if s.Fail != nil {
		if code := s.Fail(req); code != "" {
			status := http.StatusBadRequest
			if serverErrors[code] {
				status = http.StatusInternalServerError
			}
			writeError(w, status, code, "fake EC2 has no capacity for "+req.InstanceType+" in "+req.SubnetID)
			return
		}
	}
	if req.ImageID != "" && !strings.HasPrefix(req.ImageID, "ami-") && !strings.HasPrefix(req.ImageID, "resolve:ssm:") {
		writeError(w, http.StatusBadRequest, "InvalidAMIID.Malformed", "Invalid id: \""+req.ImageID+"\"")
		return
	}
	s.mu.Lock()
	s.nextID++
	in := &Instance{
		ID: fmt.Sprintf("i-%017x", s.nextID), ImageID: req.ImageID, InstanceType: req.InstanceType, SubnetID: req.SubnetID,
		PrivateIP: fmt.Sprintf("10.0.%d.%d", s.nextID/250, s.nextID%250+1), ClientToken: req.ClientToken, State: "pending",
		Market: req.Market, Tags: tags, UserData: userData, LaunchTime: time.Now().UTC(), StateTime: time.Now(),
		HTTPTokens: form.Get("MetadataOptions.HttpTokens"), RootVolumeSize: size, RootVolumeEncrypted: encrypted,
		LaunchTemplate: strings.TrimSuffix(form.Get("LaunchTemplate.LaunchTemplateId")+form.Get("LaunchTemplate.LaunchTemplateName")+"@"+form.Get("LaunchTemplate.Version"), "@"),
		SecurityGroups: list(form, "SecurityGroupId"),
	}
	if id := form.Get("LaunchTemplate.LaunchTemplateId"); id != "" {
		// EC2 tags an instance with the template it was launched from, in
		// tags no caller may set.
		in.Tags["aws:ec2launchtemplate:id"] = id
		in.Tags["aws:ec2launchtemplate:version"] = "1"
	}
	s.instances[in.ID] = in
	s.tokens[req.ClientToken] = in.ID
	body := instanceXML(in)
	s.mu.Unlock()
	writeRun(w, body)
}

func writeRun(w http.ResponseWriter, item string) {
	w.Header().Set("Content-Type", "text/xml")
	fmt.Fprintf(w, `<RunInstancesResponse xmlns="%s"><requestId>fake</requestId><reservationId>r-fake</reservationId><ownerId>123456789012</ownerId><instancesSet>%s</instancesSet></RunInstancesResponse>`, xmlns, item)
}

var stateCodes = map[string]int{"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}

func instanceXML(in *Instance) string {
	var tags strings.Builder
	keys := make([]string, 0, len(in.Tags))
	for k := range in.Tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&tags, "<item><key>%s</key><value>%s</value></item>", xmlEscape(k), xmlEscape(in.Tags[k]))
	}
	return fmt.Sprintf(`<item><instanceId>%s</instanceId><imageId>%s</imageId><instanceState><code>%d</code><name>%s</name></instanceState><privateIpAddress>%s</privateIpAddress><instanceType>%s</instanceType><launchTime>%s</launchTime><subnetId>%s</subnetId><tagSet>%s</tagSet></item>`,
		in.ID, xmlEscape(in.ImageID), stateCodes[in.State], in.State, in.PrivateIP, in.InstanceType, in.LaunchTime.Format(time.RFC3339), in.SubnetID, tags.String())
}

func (s *Server) terminateInstances(w http.ResponseWriter, form url.Values) {
	ids := list(form, "InstanceId")
	if len(ids) == 0 {
		s.refuse(w, "TerminateInstances", "no InstanceId")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var missing []string
	for _, id := range ids {
		if _, ok := s.instances[id]; !ok {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		// Like EC2: one unknown id fails the whole call.
		writeError(w, http.StatusBadRequest, "InvalidInstanceID.NotFound", fmt.Sprintf("The instance IDs '%s' do not exist", strings.Join(missing, ", ")))
		return
	}
	var items strings.Builder
	for _, id := range ids {
		in := s.instances[id]
		prev := in.State
		if in.State != "terminated" {
			in.State, in.StateTime = "shutting-down", time.Now()
		}
		fmt.Fprintf(&items, `<item><instanceId>%s</instanceId><currentState><code>%d</code><name>%s</name></currentState><previousState><code>%d</code><name>%s</name></previousState></item>`,
			id, stateCodes[in.State], in.State, stateCodes[prev], prev)
	}
	w.Header().Set("Content-Type", "text/xml")
	fmt.Fprintf(w, `<TerminateInstancesResponse xmlns="%s"><requestId>fake</requestId><instancesSet>%s</instancesSet></TerminateInstancesResponse>`, xmlns, items.String())
}

// describePage is how many instances a DescribeInstances page holds (EC2
// pages too; a small page makes callers prove they follow nextToken).
const describePage = 5

func (s *Server) describeInstances(w http.ResponseWriter, form url.Values) {
	filters := map[string][]string{}
	for i := 1; form.Get("Filter."+strconv.Itoa(i)+".Name") != ""; i++ {
		p := "Filter." + strconv.Itoa(i)
		filters[form.Get(p+".Name")] = list(form, p+".Value")
	}
	ids := list(form, "InstanceId")
	s.mu.Lock()
	var match []*Instance
	for _, in := range s.instances {
		if len(ids) > 0 && !slices.Contains(ids, in.ID) {
			continue
		}
		ok := true
		for name, values := range filters {
			switch {
			case strings.HasPrefix(name, "tag:"):
				ok = ok && slices.Contains(values, in.Tags[strings.TrimPrefix(name, "tag:")])
			case name == "instance-state-name":
				ok = ok && slices.Contains(values, in.State)
			default:
				s.mu.Unlock()
				s.refuse(w, "DescribeInstances", "filter "+name+" not supported by the fake")
				return
			}
		}
		if ok {
			match = append(match, in)
		}
	}
	sort.Slice(match, func(i, j int) bool { return match[i].ID < match[j].ID })
	start, _ := strconv.Atoi(form.Get("NextToken"))
	end := min(start+describePage, len(match))
	var items strings.Builder
	for _, in := range match[start:end] {
		items.WriteString(instanceXML(in))
	}
	s.mu.Unlock()
	next := ""
	if end < len(match) {
		next = "<nextToken>" + strconv.Itoa(end) + "</nextToken>"
	}
	w.Header().Set("Content-Type", "text/xml")
	fmt.Fprintf(w, `<DescribeInstancesResponse xmlns="%s"><requestId>fake</requestId><reservationSet><item><reservationId>r-fake</reservationId><instancesSet>%s</instancesSet></item></reservationSet>%s</DescribeInstancesResponse>`,
		xmlns, items.String(), next)
}

func (s *Server) describeImages(w http.ResponseWriter, form url.Values) {
	var items strings.Builder
	for _, id := range list(form, "ImageId") {
		root := "/dev/xvda"
		if s.Images != nil {
			var ok bool
			if root, ok = s.Images[id]; !ok {
				writeError(w, http.StatusBadRequest, "InvalidAMIID.NotFound", "The image id '["+id+"]' does not exist")
				return
			}
		}
		fmt.Fprintf(&items, `<item><imageId>%s</imageId><rootDeviceName>%s</rootDeviceName><rootDeviceType>ebs</rootDeviceType></item>`, xmlEscape(id), root)
	}
	w.Header().Set("Content-Type", "text/xml")
	fmt.Fprintf(w, `<DescribeImagesResponse xmlns="%s"><requestId>fake</requestId><imagesSet>%s</imagesSet></DescribeImagesResponse>`, xmlns, items.String())
}

// getParameter answers SSM's GetParameter (JSON protocol), for AMIs named
// by an SSM parameter path.
func (s *Server) getParameter(w http.ResponseWriter, r *http.Request) {
	var in struct{ Name string }
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.calls["ssm:GetParameter"]++
	value, ok := s.Parameters[in.Name]
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	if !ok {
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]string{"__type": "ParameterNotFound", "message": "parameter " + in.Name + " not found"})
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"Parameter": map[string]any{"Name": in.Name, "Type": "String", "Value": value, "Version": 1}})
}
