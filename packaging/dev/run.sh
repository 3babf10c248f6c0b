#!/usr/bin/env bash
# Builds SandGNAT and runs the appliance in the foreground with the
# example settings (as root: workers drop to the `sandgnat` user, made
# here if missing). Extra arguments go to `sandgnat serve`.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash packaging/dev/bootstrap.sh
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/sandgnat-target}
cargo build --release --locked
if [ "$(id -u)" = 0 ]; then
  getent passwd sandgnat >/dev/null || useradd --system --home-dir /var/lib/sandgnat --shell /usr/sbin/nologin sandgnat
  install -d -m 0750 -o sandgnat -g sandgnat /var/lib/sandgnat
  install -d -m 0755 /run/sandgnat
fi
exec "$CARGO_TARGET_DIR/release/sandgnat" serve --config assets/sandgnat.toml "$@"
