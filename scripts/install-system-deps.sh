#!/usr/bin/env bash
# Install the system tools that tunnelacct's lab, oracle, end-to-end and browser tests use, when
# missing.
# Idempotent and non-interactive (Debian/Ubuntu, needs root or password-less sudo). Prints one
# line per package it installs; exits non-zero, with apt's output, when an install fails.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

# binary:package (an absolute path stands for a file the package ships)
DEPS=(
  tcpdump:tcpdump
  tshark:tshark
  editcap:wireshark-common
  wireguard-go:wireguard-go
  wg:wireguard-tools
  iperf3:iperf3
  ip:iproute2
  sqlite3:sqlite3
  prometheus:prometheus
  # the docs' examples (tests/test_docs.py) run curl against serve, and `script` for a terminal
  curl:curl
  script:bsdutils
  # examples/ (tests/test_examples.py): promtool checks prometheus.yml and unit-tests alerts.yml;
  # systemd-analyze verifies the units and systemd-sysusers creates their user in a temp root
  promtool:prometheus
  systemd-analyze:systemd
  systemd-sysusers:systemd
  # the flow-record collector's tests (issue 20): three softflowd exporters on a veth, nfcapd
  # and nfdump as the oracle, ethtool to turn the veth's offloads off, tcpreplay for replays
  softflowd:softflowd
  softflowctl:softflowd
  nfcapd:nfdump
  nfdump:nfdump
  tcpreplay:tcpreplay
  ethtool:ethtool
  # the web UI's browser tests drive Debian's Chromium through Playwright's executable_path,
  # so no browser is downloaded (issue 19); the font gives its screenshots legible text
  /usr/lib/chromium/chromium:chromium
  /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf:fonts-dejavu-core
)
# Packages that ship a system service: installed for their binary only. The tests start their
# own prometheus on a free port, and a system one would hold :9090 and scrape on its own;
# likewise a system softflowd or nfcapd would export or collect on its own.
SERVICES=(prometheus softflowd nfdump)
# Wait for a concurrent apt/dpkg run instead of failing on its lock.
APT_OPTS=(-y --no-install-recommends -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0)

have() {  # sbin directories are often missing from a non-root PATH
  if [[ $1 == /* ]]; then
    [[ -e $1 ]]
  else
    command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 || -x /sbin/$1 ]]
  fi
}

if [[ $(id -u) -eq 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo -n)  # -n: fail instead of prompting, there is no stdin in CI
else
  SUDO=()
fi

missing=()
for dep in "${DEPS[@]}"; do
  have "${dep%%:*}" || missing+=("$dep")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "system deps: all present"
  exit 0
fi
if [[ $(id -u) -ne 0 && ${#SUDO[@]} -eq 0 ]]; then
  echo "error: missing ${missing[*]} and not root (no sudo) to install them" >&2
  exit 1
fi

aptlog=$(mktemp)
POLICY=/usr/sbin/policy-rc.d
SAVED_POLICY=$POLICY.tunnelacct-saved
swapped_policy=false
cleanup() {
  rm -f "$aptlog"
  if $swapped_policy; then  # put the host's own policy back (or none, as before)
    if [[ -e $SAVED_POLICY ]]; then
      "${SUDO[@]}" mv -f "$SAVED_POLICY" "$POLICY"
    else
      "${SUDO[@]}" rm -f "$POLICY"
    fi
  fi
}
trap cleanup EXIT

# invoke-rc.d and deb-systemd-invoke ask policy-rc.d before a maintainer script starts a
# service, and 101 means "forbidden" (Debian policy, invoke-rc.d(8)). A host whose policy
# already forbids it (Docker images ship one) is left alone; otherwise ours stands in during
# the install, and the host's is restored on exit.
policy_forbids_starts() {
  local rc=0
  [[ -x $POLICY ]] || return 1
  "$POLICY" prometheus start >/dev/null 2>&1 </dev/null || rc=$?
  [[ $rc -eq 101 ]]
}
if ! policy_forbids_starts; then
  if [[ -e $POLICY ]]; then
    "${SUDO[@]}" mv -f "$POLICY" "$SAVED_POLICY"
  fi
  swapped_policy=true
  printf '#!/bin/sh\n# installed by tunnelacct install-system-deps.sh while it runs\nexit 101\n' \
    | "${SUDO[@]}" tee "$POLICY" >/dev/null
  "${SUDO[@]}" chmod 755 "$POLICY"
fi
if ! "${SUDO[@]}" apt-get update -o DPkg::Lock::Timeout=600 >"$aptlog" 2>&1 </dev/null; then
  cat "$aptlog" >&2
  echo "error: apt-get update failed" >&2
  exit 1
fi
for dep in "${missing[@]}"; do
  bin=${dep%%:*}
  pkg=${dep#*:}
  if have "$bin"; then  # an earlier package of this run brought it
    continue
  fi
  if ! "${SUDO[@]}" apt-get install "${APT_OPTS[@]}" "$pkg" >"$aptlog" 2>&1 </dev/null; then
    cat "$aptlog" >&2
    echo "error: could not install package $pkg (for $bin)" >&2
    exit 1
  fi
  if ! have "$bin"; then
    echo "error: installed package $pkg but $bin is still missing" >&2
    exit 1
  fi
  for service in "${SERVICES[@]}"; do
    if [[ $service == "$pkg" ]]; then  # not started now (policy above), nor at the next boot
      "${SUDO[@]}" update-rc.d "$service" disable >/dev/null 2>&1 || true
    fi
  done
  echo "installed $pkg (provides $bin)"
done
