#!/usr/bin/env bash
# Installs what building and testing SandGNAT needs on a fresh Debian
# machine (as root): a C toolchain for jemalloc, cmake for pingora's
# zlib-ng, the PostgreSQL client, redis, curl, a Rust toolchain when none
# is on PATH, and the S3 server the storage tests run (Garage).
# Idempotent; quiet when all is there.
set -euo pipefail
need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v curl >/dev/null || need_apt+=(curl)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
command -v psql >/dev/null || need_apt+=(postgresql-client)
# pingora-core's zlib-ng (through flate2) is built with cmake.
command -v cmake >/dev/null || need_apt+=(cmake)
# The front-end tests drive `openssl s_client` to prove old TLS is refused.
command -v openssl >/dev/null || need_apt+=(openssl)
# The shared rate-limit test runs a private redis-server.
command -v redis-server >/dev/null || need_apt+=(redis-server)
# packaging/test-deb.sh: systemd-analyze (verify, security); setpriv,
# unshare (util-linux) and ps (procps) to start the service as its unit
# does and watch it; strace to hold its system calls against the unit's
# seccomp filter; python3 for the stand-in notification socket; jq for
# the answers; adduser because the package depends on it.
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v setpriv >/dev/null || need_apt+=(util-linux)
command -v pgrep >/dev/null || need_apt+=(procps)
command -v python3 >/dev/null || need_apt+=(python3)
command -v jq >/dev/null || need_apt+=(jq)
command -v strace >/dev/null || need_apt+=(strace)
command -v adduser >/dev/null || need_apt+=(adduser)
# The sample-download tests open the password-protected zip with the
# readers analysts use: Info-ZIP's unzip and 7-Zip.
command -v unzip >/dev/null || need_apt+=(unzip)
command -v 7z >/dev/null || need_apt+=(p7zip-full)
# tests/common/py.rs makes a virtualenv for the Python clients the STIX
# and TAXII tests check the appliance with (stix2-validator, stix2,
# taxii2-client); Debian splits venv (and its pip) out of python3.
python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
# tests/status_page.rs drives headless Chromium through chromedriver to
# sign in to the status page and read what it shows.
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cargo rustc >/dev/null
  fi
fi
# tests/storage.rs and benches/storage.sh run a real S3 server: Garage,
# built once from crates.io into a directory outside the clone (as the
# target directory is) and reused; a cold build takes about 20 minutes on
# two cores. Its own target directory, so an interrupted build resumes and
# CARGO_TARGET_DIR is never filled with Garage's objects.
garage_root=/var/tmp/sandgnat-s3/garage
if [ ! -x "$garage_root/bin/garage" ]; then
  echo "bootstrap: building Garage 2.5.0 into $garage_root (once)" >&2
  CARGO_TARGET_DIR=/var/tmp/sandgnat-s3/build \
    cargo install garage --locked --version 2.5.0 --root "$garage_root" --quiet
  rm -rf /var/tmp/sandgnat-s3/build
fi
