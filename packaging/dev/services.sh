#!/usr/bin/env bash
# Makes sure the services the tests talk to are up: PostgreSQL reachable
# on 127.0.0.1:5432 as `postgres` without a password (tests create and
# drop their own databases), and Redis on 127.0.0.1:6379. On a fresh
# Debian machine this installs and starts them; on one that has them, it
# only starts what is stopped.
set -euo pipefail
pg_ok() { psql -h 127.0.0.1 -U postgres -d postgres -tAc 'SELECT 1' >/dev/null 2>&1; }
if ! command -v pg_ctlcluster >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
if ! pg_ok; then
  ver=$(ls /etc/postgresql | sort -V | tail -n1)
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start 2>/dev/null || true
  for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 && break; sleep 0.2; done
  if ! pg_ok; then
    # A stock cluster asks for passwords on TCP: allow the local test user.
    hba=/etc/postgresql/$ver/main/pg_hba.conf
    grep -q 'sandgnat-tests' "$hba" || sed -i '1i host all postgres 127.0.0.1/32 trust # sandgnat-tests' "$hba"
    pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
    for _ in $(seq 50); do pg_ok && break; sleep 0.2; done
  fi
fi
pg_ok || { echo "services.sh: PostgreSQL is not reachable on 127.0.0.1:5432 as postgres" >&2; exit 1; }
if ! command -v redis-server >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
fi
