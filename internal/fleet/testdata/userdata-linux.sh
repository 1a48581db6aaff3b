#!/bin/sh
# Slipway build VM vm-0123456789abcdef0123: install and start the agent.
set -eu
umask 077
mkdir -p /etc/slipway /var/lib/slipway/work
chmod 0700 /etc/slipway
umask 022
mkdir -p "$(dirname /usr/local/bin/slipway-agent)" /etc/systemd/system /var/log
umask 077
cat > /etc/slipway/agent.crt <<'SLIPWAY_PEM'
-----BEGIN CERTIFICATE-----
TUlJQ2VydGlmaWNhdGU=
-----END CERTIFICATE-----
SLIPWAY_PEM
cat > /etc/slipway/agent.key <<'SLIPWAY_PEM'
-----BEGIN PRIVATE KEY-----
TUlJS2V5
-----END PRIVATE KEY-----
SLIPWAY_PEM
cat > /etc/slipway/client-ca.crt <<'SLIPWAY_PEM'
-----BEGIN CERTIFICATE-----
TUlJQ0E=
-----END CERTIFICATE-----
SLIPWAY_PEM
chmod 0600 /etc/slipway/agent.crt /etc/slipway/agent.key /etc/slipway/client-ca.crt
tmp=/usr/local/bin/slipway-agent.download
for attempt in 1 2 3 4 5; do
  if command -v curl >/dev/null 2>&1; then
    curl -fsSL --max-time 120 -o "$tmp" 'https://artifacts.example/slipway-agent-v1' && break
  else
    # No -T: BusyBox 1.35's wget crashes with it. The boot budget bounds a stalled download.
    wget -q -O "$tmp" 'https://artifacts.example/slipway-agent-v1' && break
  fi
  sleep $attempt
done
chmod 0755 "$tmp"
mv "$tmp" /usr/local/bin/slipway-agent
test -x /usr/local/bin/slipway-agent
umask 022
cat > /etc/systemd/system/slipway-agent.service <<'SLIPWAY_UNIT'
[Unit]
Description=Slipway agent
After=network-online.target docker.service
Wants=network-online.target

[Service]
ExecStart=/usr/local/bin/slipway-agent --addr :9079 --tls-cert /etc/slipway/agent.crt --tls-key /etc/slipway/agent.key --client-ca /etc/slipway/client-ca.crt --work-dir /var/lib/slipway/work
Restart=always
RestartSec=1
# The agent puts each step in a cgroup of its own under the service's.
Delegate=yes

[Install]
WantedBy=multi-user.target
SLIPWAY_UNIT
systemctl daemon-reload
systemctl enable --now slipway-agent.service
# The pool's own script; the agent runs whatever it does.
echo 'ZWNobyAnaXQnJ3MgbWluZScgYHdob2FtaWAgJEhPTUUKU0xJUFdBWV9QRU0KJ0AK' | base64 -d > /etc/slipway/user-data.sh
sh /etc/slipway/user-data.sh > /var/log/slipway-user-data.log 2>&1 || echo "slipway: the pool's user data failed; see /var/log/slipway-user-data.log" >&2
