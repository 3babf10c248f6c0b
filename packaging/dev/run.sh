#!/usr/bin/env bash
# Builds SandGNAT and runs the appliance in the foreground with the
# example settings (as root: workers drop to the `sandgnat` user, made
# here if missing, and the local PostgreSQL gets the roles and database
# `sandgnat` with the schema, as the package makes them). Extra arguments
# go to `sandgnat serve`.
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
  install -d -m 0755 -o sandgnat -g sandgnat /run/sandgnat
  # The example settings' database (postgres:///sandgnat, peer
  # authentication): the roles and database as the package's postinst
  # makes them (sandgnat_owner owns the schema; sandgnat, the service's
  # login, is a member of sandgnat_service and owns nothing), the schema
  # applied as postgres acting as sandgnat_owner. The settings are copied
  # where sandgnat can read them.
  bash packaging/dev/services.sh
  pg() { runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres -tAc "$1"; }
  for role in "sandgnat_owner NOLOGIN" "sandgnat_service NOLOGIN" "sandgnat LOGIN"; do
    [ "$(cd / && pg "SELECT 1 FROM pg_roles WHERE rolname = '${role%% *}'")" = 1 ] || (cd / && pg "CREATE ROLE $role")
  done
  (cd / && pg 'GRANT sandgnat_service TO sandgnat' 2>/dev/null) || true
  [ "$(cd / && pg "SELECT 1 FROM pg_database WHERE datname = 'sandgnat'")" = 1 ] || (cd / && pg 'CREATE DATABASE sandgnat OWNER sandgnat_owner')
  # A database made before the roles were split: hand it to the owner.
  if [ "$(cd / && pg "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'sandgnat'")" = sandgnat ]; then
    (cd / && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d sandgnat -tAc \
      'ALTER DATABASE sandgnat OWNER TO sandgnat_owner; REASSIGN OWNED BY sandgnat TO sandgnat_owner')
  fi
  install -m 0644 "$config" /run/sandgnat/dev.toml
  config=/run/sandgnat/dev.toml
  (cd / && SANDGNAT_DATABASE__MIGRATE_URL='postgres:///sandgnat?user=postgres&options=-c%20role%3Dsandgnat_owner' \
    runuser -u postgres -- "$bin" migrate --config "$config")
  echo "run.sh: first admin key: runuser -u sandgnat -- $bin keys create --config $config --name admin --role admin" >&2
fi
if [ "$(id -u)" = 0 ]; then
  # As the unit runs it: the service's account from the start, so the
  # master's own database connection is the service role's too (as root,
  # peer authentication would make it root's, which `serve` refuses when
  # that role is a superuser).
  exec runuser -u sandgnat -- "$bin" serve --config "$config" "$@"
fi
exec "$bin" serve --config "$config" "$@"
