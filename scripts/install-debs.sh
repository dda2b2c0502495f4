#!/usr/bin/env bash
# Installs the Debian tools the test suite drives (sipp, dig, ip, nft, serf) when they are missing.
# Needs root for apt-get; without root it says what is missing and carries on (those tests skip).
set -euo pipefail
declare -A want=( [sipp]=sip-tester [dig]=bind9-dnsutils [ip]=iproute2 [nft]=nftables [serf]=serf )
missing=()
for cmd in "${!want[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${want[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "install-debs: not root; missing ${missing[*]} (tests that need them will skip)" >&2
  exit 0
fi
echo "install-debs: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
