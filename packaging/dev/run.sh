#!/usr/bin/env bash
# Builds SandGNAT and runs the appliance in the foreground with the
# example settings (as root: workers drop to the `sandgnat` user, made
# here if missing, and the local PostgreSQL gets the role and database
# `sandgnat` with the schema). Extra arguments go to `sandgnat serve`.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash packaging/dev/bootstrap.sh
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/sandgnat-target}
cargo build --release --locked
bin=$CARGO_TARGET_DIR/release/sandgnat
config=assets/sandgnat.toml
if [ "$(id -u)" = 0 ]; then
  getent passwd sandgnat >/dev/null || useradd --system --home-dir /var/lib/sandgnat --shell /usr/sbin/nologin sandgnat
  install -d -m 0750 -o sandgnat -g sandgnat /var/lib/sandgnat
  install -d -m 0755 /run/sandgnat
  # The example settings' database (postgres:///sandgnat, peer
  # authentication): the role and database as the package's postinst
  # makes them, and the schema applied as sandgnat so that it owns its
  # tables. The settings are copied where sandgnat can read them.
  bash packaging/dev/services.sh
  pg() { runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres -tAc "$1"; }
  [ "$(cd / && pg "SELECT 1 FROM pg_roles WHERE rolname = 'sandgnat'")" = 1 ] || (cd / && pg 'CREATE ROLE sandgnat LOGIN')
  [ "$(cd / && pg "SELECT 1 FROM pg_database WHERE datname = 'sandgnat'")" = 1 ] || (cd / && pg 'CREATE DATABASE sandgnat OWNER sandgnat')
  install -m 0644 "$config" /run/sandgnat/dev.toml
  config=/run/sandgnat/dev.toml
  (cd / && runuser -u sandgnat -- "$bin" migrate --config "$config")
  echo "run.sh: first admin key: runuser -u sandgnat -- $bin keys create --config $config --name admin --role admin" >&2
fi
exec "$bin" serve --config "$config" "$@"
