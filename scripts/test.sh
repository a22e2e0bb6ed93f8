#!/usr/bin/env bash
# Runs the whole test suite, installing the test peers first when they are missing:
#   - OpenSSH sshd (Debian openssh-server), run by the SSH conformance suite as a private process;
#   - moto_server (PyPI moto[server]), run by the ELBv2 conformance suite;
#   - fusermount3 (Debian fuse3), with which the power-loss suite mounts powerfs (it also needs
#     /dev/fuse and root; without them that suite fails with the reason, it is never skipped);
#   - chromium and chromedriver (Debian chromium, chromium-driver), the real browser the web UI
#     suite (tests/tests/web.rs) drives over WebDriver.
#   - the PostgreSQL server (Debian postgresql): the PostgreSQL store's suites start a private
#     server of their own (initdb into a temporary directory, a loopback port, as the postgres
#     user); the package's own cluster is not used.
# Usage: scripts/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: installing $1 needs root; run: sudo $2" >&2
    exit 2
  fi
}

if [ ! -x /usr/sbin/sshd ]; then
  need_root openssh-server "apt-get install -y openssh-server"
  echo "test.sh: installing openssh-server (test peer for the SSH suite)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null
fi
if ! command -v moto_server >/dev/null 2>&1 || ! python3 -c 'import moto.server' >/dev/null 2>&1; then
  echo "test.sh: installing moto[server] (test peer for the ELBv2 suite)" >&2
  python3 -m pip install --quiet 'moto[server]'
  # pyenv installs need their shims refreshed before `moto_server` is on PATH.
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
fi
if ! command -v fusermount3 >/dev/null 2>&1; then
  need_root fuse3 "apt-get install -y fuse3"
  echo "test.sh: installing fuse3 (fusermount3, for the power-loss filesystem)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 >/dev/null
fi
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  need_root chromium "apt-get install -y chromium chromium-driver"
  echo "test.sh: installing chromium and chromium-driver (the browser of the web UI suite)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  need_root postgresql "apt-get install -y postgresql"
  echo "test.sh: installing postgresql (the server the PostgreSQL store's suites start privately)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
command -v moto_server >/dev/null 2>&1 || { echo "test.sh: moto_server is still not on PATH after installing moto[server]" >&2; exit 2; }

# The end-to-end tests drive the `waymark` binary itself.
cargo build --workspace --bins
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
if [ "$#" -eq 0 ]; then
  # The bounded explorations (power cuts, byte flips) run on their own after the rest, with
  # their output shown: each prints how many cuts or flips it made and what it checked.
  explorations=(power_loss::engine_power_cut power_loss::runbook_power_cut log_damage::every_byte_flip)
  skips=()
  for t in "${explorations[@]}"; do skips+=(--skip "$t"); done
  cargo test --workspace -- "${skips[@]}" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  cargo test -p waymark-tests --test tests -- --nocapture "${explorations[@]}" 2>&1 | tee -a "$log"
  explored=${PIPESTATUS[0]}
  if [ "$status" -eq 0 ]; then status=$explored; fi
else
  cargo test --workspace "$@" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
fi
set -e
# One closing line over every test binary (cargo prints one `test result:` per binary, the last
# of which is often an empty doc-test run).
awk '/^test result:/ { for (i = 2; i <= NF; i++) { if ($i == "passed;") p += $(i-1); if ($i == "failed;") f += $(i-1) } }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
