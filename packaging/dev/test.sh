#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit and
# end-to-end tests against the real binary, then the Debian package
# installed, run and purged on this machine (packaging/test-deb.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash packaging/dev/bootstrap.sh
bash packaging/dev/services.sh
export PATH="$HOME/.cargo/bin:$PATH"
# Reuse a build directory outside the clone: a fresh clone then only
# rebuilds what changed.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/sandgnat-target}
export CARGO_TERM_COLOR=never
# #[sqlx::test] and the end-to-end tests make their own databases here.
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# Every test binary runs even after one fails, so one CI run shows all.
cargo test --locked --no-fail-fast
bash packaging/test-deb.sh
