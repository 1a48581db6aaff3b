package fleet

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"text/template"
)

// MaxUserDataBytes is EC2's limit on user data, before base64.
const MaxUserDataBytes = 16 << 10

// Paths the user data installs to; the local provider uses the same layout.
const (
	LinuxConfigDir   = "/etc/slipway"
	LinuxAgentPath   = "/usr/local/bin/slipway-agent"
	LinuxWorkDir     = "/var/lib/slipway/work"
	WindowsConfigDir = `C:\ProgramData\slipway`
	WindowsAgentPath = `C:\Program Files\slipway\slipway-agent.exe`
	WindowsWorkDir   = `C:\ProgramData\slipway\work`
)

// Names of the files in the config dir.
const (
	CertFile     = "agent.crt"
	KeyFile      = "agent.key"
	ClientCAFile = "client-ca.crt"
)

var (
	pemBlock = regexp.MustCompile(`^-----BEGIN [A-Z ]+-----\n[A-Za-z0-9+/=\n]+-----END [A-Z ]+-----\n?$`)
	safeURL  = regexp.MustCompile(`^https?://[A-Za-z0-9.:/_%?=&~+-]+$`)
)

func (b *Boot) check() error {
	var errs []error
	for name, pem := range map[string][]byte{"certificate": b.CertPEM, "key": b.KeyPEM, "client CA": b.ClientCAPEM} {
		if !pemBlock.Match(pem) {
			errs = append(errs, fmt.Errorf("boot %s: the %s is not one PEM block", b.LaunchID, name))
		}
	}
	if b.AgentURL != "" && !safeURL.MatchString(b.AgentURL) {
		errs = append(errs, fmt.Errorf("boot %s: agent URL %q has characters a script would have to quote", b.LaunchID, b.AgentURL))
	}
	if b.Port <= 0 || b.Port > 65535 {
		errs = append(errs, fmt.Errorf("boot %s: port %d", b.LaunchID, b.Port))
	}
	return errors.Join(errs...)
}

type scriptData struct {
	*Boot
	ConfigDir, AgentPath, WorkDir   string
	CertFile, KeyFile, ClientCAFile string
	ExtraBase64                     string
}

func render(tmpl *template.Template, b *Boot, configDir, agentPath, workDir string) ([]byte, error) {
	if err := b.check(); err != nil {
		return nil, err
	}
	if b.AgentPath != "" {
		agentPath = b.AgentPath
	}
	var buf bytes.Buffer
	err := tmpl.Execute(&buf, scriptData{
		Boot: b, ConfigDir: configDir, AgentPath: agentPath, WorkDir: workDir,
		CertFile: CertFile, KeyFile: KeyFile, ClientCAFile: ClientCAFile,
		// The user's script is carried base64-encoded: nothing in it can end
		// a heredoc or break out of a string.
		ExtraBase64: base64.StdEncoding.EncodeToString([]byte(b.ExtraUserData)),
	})
	if err != nil {
		return nil, fmt.Errorf("user data for %s: %w", b.LaunchID, err)
	}
	if buf.Len() > MaxUserDataBytes {
		return nil, fmt.Errorf("user data for %s is %d bytes, over EC2's %d: shorten the pool's user_data", b.LaunchID, buf.Len(), MaxUserDataBytes)
	}
	return buf.Bytes(), nil
}

// LinuxUserData is the shell script cloud-init runs on a Linux VM: it writes
// the certificates (0600), installs the agent (downloaded, or baked into the
// image), runs it as a systemd unit that restarts it, then runs the pool's
// own script.
func LinuxUserData(b Boot) ([]byte, error) {
	return render(linuxTemplate, &b, LinuxConfigDir, LinuxAgentPath, LinuxWorkDir)
}

// WindowsUserData is the PowerShell EC2Launch v2 runs on a Windows VM: the
// same, with the agent as a Windows service and a firewall rule for its port.
func WindowsUserData(b Boot) ([]byte, error) {
	return render(windowsTemplate, &b, WindowsConfigDir, WindowsAgentPath, WindowsWorkDir)
}

var funcs = template.FuncMap{"trim": func(b []byte) string { return strings.TrimRight(string(b), "\n") }}

var linuxTemplate = template.Must(template.New("linux").Funcs(funcs).Parse(`#!/bin/sh
# Slipway build VM {{.LaunchID}}: install and start the agent.
set -eu
umask 077
mkdir -p {{.ConfigDir}} {{.WorkDir}}
chmod 0700 {{.ConfigDir}}
umask 022
mkdir -p "$(dirname {{.AgentPath}})" /etc/systemd/system /var/log
umask 077
cat > {{.ConfigDir}}/{{.CertFile}} <<'SLIPWAY_PEM'
{{trim .CertPEM}}
SLIPWAY_PEM
cat > {{.ConfigDir}}/{{.KeyFile}} <<'SLIPWAY_PEM'
{{trim .KeyPEM}}
SLIPWAY_PEM
cat > {{.ConfigDir}}/{{.ClientCAFile}} <<'SLIPWAY_PEM'
{{trim .ClientCAPEM}}
SLIPWAY_PEM
chmod 0600 {{.ConfigDir}}/{{.CertFile}} {{.ConfigDir}}/{{.KeyFile}} {{.ConfigDir}}/{{.ClientCAFile}}
{{- if .AgentURL}}
tmp={{.AgentPath}}.download
for attempt in 1 2 3 4 5; do
  if command -v curl >/dev/null 2>&1; then
    curl -fsSL --max-time 120 -o "$tmp" '{{.AgentURL}}' && break
  else
    # No -T: BusyBox 1.35's wget crashes with it. The boot budget bounds a stalled download.
    wget -q -O "$tmp" '{{.AgentURL}}' && break
  fi
  sleep $attempt
done
chmod 0755 "$tmp"
mv "$tmp" {{.AgentPath}}
{{- end}}
test -x {{.AgentPath}}
umask 022
cat > /etc/systemd/system/slipway-agent.service <<'SLIPWAY_UNIT'
[Unit]
Description=Slipway agent
After=network-online.target docker.service
Wants=network-online.target

[Service]
ExecStart={{.AgentPath}} --addr :{{.Port}} --tls-cert {{.ConfigDir}}/{{.CertFile}} --tls-key {{.ConfigDir}}/{{.KeyFile}} --client-ca {{.ConfigDir}}/{{.ClientCAFile}} --work-dir {{.WorkDir}}
Restart=always
RestartSec=1
# The agent puts each step in a cgroup of its own under the service's.
Delegate=yes

[Install]
WantedBy=multi-user.target
SLIPWAY_UNIT
systemctl daemon-reload
systemctl enable --now slipway-agent.service
{{- if .ExtraUserData}}
# The pool's own script; the agent runs whatever it does.
echo '{{.ExtraBase64}}' | base64 -d > {{.ConfigDir}}/user-data.sh
sh {{.ConfigDir}}/user-data.sh > /var/log/slipway-user-data.log 2>&1 || echo "slipway: the pool's user data failed; see /var/log/slipway-user-data.log" >&2
{{- end}}
`))

var windowsTemplate = template.Must(template.New("windows").Funcs(funcs).Parse(`<powershell>
# Slipway build VM {{.LaunchID}}: install and start the agent.
$ErrorActionPreference = 'Stop'
$config = '{{.ConfigDir}}'
New-Item -ItemType Directory -Force -Path $config, '{{.WorkDir}}' | Out-Null
# Only SYSTEM and Administrators may read the key.
icacls $config /inheritance:r /grant:r 'SYSTEM:(OI)(CI)F' 'Administrators:(OI)(CI)F' | Out-Null
Set-Content -NoNewline -Encoding ascii -Path (Join-Path $config '{{.CertFile}}') -Value @'
{{trim .CertPEM}}
'@
Set-Content -NoNewline -Encoding ascii -Path (Join-Path $config '{{.KeyFile}}') -Value @'
{{trim .KeyPEM}}
'@
Set-Content -NoNewline -Encoding ascii -Path (Join-Path $config '{{.ClientCAFile}}') -Value @'
{{trim .ClientCAPEM}}
'@
$agent = '{{.AgentPath}}'
{{- if .AgentURL}}
New-Item -ItemType Directory -Force -Path (Split-Path $agent) | Out-Null
[Net.ServicePointManager]::SecurityProtocol = [Net.SecurityProtocolType]::Tls12
for ($attempt = 1; $attempt -le 5; $attempt++) {
  try { Invoke-WebRequest -UseBasicParsing -Uri '{{.AgentURL}}' -OutFile "$agent.download"; break }
  catch { if ($attempt -eq 5) { throw }; Start-Sleep -Seconds $attempt }
}
Move-Item -Force "$agent.download" $agent
{{- end}}
if (-not (Test-Path $agent)) { throw "slipway: no agent at $agent" }
$agentArgs = '--addr :{{.Port}} --tls-cert "{{.ConfigDir}}\{{.CertFile}}" --tls-key "{{.ConfigDir}}\{{.KeyFile}}" --client-ca "{{.ConfigDir}}\{{.ClientCAFile}}" --work-dir "{{.WorkDir}}"'
New-Service -Name 'slipway-agent' -DisplayName 'Slipway agent' -StartupType Automatic -BinaryPathName ('"{0}" {1}' -f $agent, $agentArgs) | Out-Null
sc.exe failure slipway-agent reset= 0 actions= restart/1000/restart/1000/restart/1000 | Out-Null
New-NetFirewallRule -DisplayName 'Slipway agent' -Direction Inbound -Protocol TCP -LocalPort {{.Port}} -Action Allow | Out-Null
Start-Service -Name 'slipway-agent'
{{- if .ExtraUserData}}
# The pool's own script; the agent runs whatever it does.
$extra = Join-Path $config 'user-data.ps1'
[IO.File]::WriteAllBytes($extra, [Convert]::FromBase64String('{{.ExtraBase64}}'))
try { & powershell.exe -NoProfile -ExecutionPolicy Bypass -File $extra *> (Join-Path $config 'user-data.log') }
catch { Write-Warning "slipway: the pool's user data failed; see $config\user-data.log" }
{{- end}}
</powershell>
`))
