#!/usr/bin/env bash
# perfops set-up: everything the demo and the tests need on a Debian machine, idempotent and
# fast on a second run (each step checks before it acts).
#   1. Debian packages: hypopg, pg_partman (for the local PostgreSQL major), Prometheus, wrk
#      (the load-test benchmark's anchor),
#      Chromium (only if /usr/bin/chromium is missing).
#   2. PostgreSQL: running, with pg_stat_statements in shared_preload_libraries (restart once).
#   3. Redis: running on 127.0.0.1:6379.
#   4. Python: uv, then the virtualenv .venv from the committed lock (uv.lock).
# Environment: PERFOPS_SKIP_APT=1 skips step 1, PERFOPS_SKIP_SERVICES=1 skips steps 2-3.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

pg_major() {
  if command -v pg_lsclusters >/dev/null 2>&1 && [ -n "$(pg_lsclusters -h 2>/dev/null)" ]; then
    pg_lsclusters -h | awk 'NR==1 {print $1}'
  else
    echo "${PG_MAJOR:-15}"
  fi
}
PGV=$(pg_major)

# 1. Debian packages -------------------------------------------------------------------------
if [ "${PERFOPS_SKIP_APT:-0}" != 1 ]; then
  wanted=("postgresql-$PGV-hypopg" "postgresql-$PGV-partman" prometheus wrk)
  command -v pg_lsclusters >/dev/null 2>&1 || wanted+=("postgresql-$PGV")
  command -v redis-server >/dev/null 2>&1 || wanted+=(redis-server)
  missing=()
  for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  fi
  # Headless Chromium for the weekly report's rendering test (about 40 s the first time).
  if [ ! -x /usr/bin/chromium ]; then
    log "installing Chromium (headless rendering test of the weekly report)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium \
      >/dev/null
  fi
fi

# 2. PostgreSQL --------------------------------------------------------------------------------
psql_admin() { $SUDO -u postgres psql -X -q -At -h 127.0.0.1 -p "${PGPORT:-5432}" "$@" 2>/dev/null \
  || psql -X -q -At -h 127.0.0.1 -p "${PGPORT:-5432}" -U postgres "$@"; }
if [ "${PERFOPS_SKIP_SERVICES:-0}" != 1 ] && command -v pg_lsclusters >/dev/null 2>&1; then
  if ! pg_isready -q -h 127.0.0.1 -p "${PGPORT:-5432}"; then
    log "starting PostgreSQL $PGV"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$PGV" main start
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p "${PGPORT:-5432}" && break; sleep 0.5; done
  fi
  preload=$(psql_admin -c "show shared_preload_libraries")
  if ! grep -qw pg_stat_statements <<<"$preload"; then
    new=$(printf '%s' "${preload:+$preload,}pg_stat_statements" | tr -d ' ')
    log "adding pg_stat_statements to shared_preload_libraries ($new) and restarting PostgreSQL"
    psql_admin -c "alter system set shared_preload_libraries = '$new'"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$PGV" main restart
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p "${PGPORT:-5432}" && break; sleep 0.5; done
  fi
fi

# 3. Redis -------------------------------------------------------------------------------------
if [ "${PERFOPS_SKIP_SERVICES:-0}" != 1 ] && ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  log "starting Redis on 127.0.0.1:6379"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/perfops.log
  for _ in $(seq 1 20); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.25; done
fi

# 4. Python ------------------------------------------------------------------------------------
if ! command -v uv >/dev/null 2>&1; then
  log "installing uv"
  python3 -m pip install --quiet --disable-pip-version-check uv
fi
uv sync --frozen --quiet --compile-bytecode
log "ready: .venv ($(.venv/bin/python --version)), PostgreSQL $PGV with pg_stat_statements, Redis"
