# shellcheck shell=bash
# Source this file, then `start_postgres`: a throwaway PostgreSQL server on loopback for the tests.
#
# Installs Debian's package when no server binaries are found (root + apt only), initialises a
# cluster in a temporary folder as a non-root user (PostgreSQL refuses to run as root), starts it
# on a free port and exports RUNNER_TEST_POSTGRES_URL (superuser "runner", trust auth on 127.0.0.1).
# `stop_postgres` stops it and removes the folder; start_postgres registers it on EXIT.

_pg_bindir() {
  local initdb
  initdb="$(command -v initdb 2>/dev/null || true)"
  if [ -z "$initdb" ]; then
    initdb="$(ls -1 /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)"
  fi
  [ -n "$initdb" ] && dirname "$(readlink -f "$initdb")"
}

_pg_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start_postgres() {
  local bindir run_as=()
  bindir="$(_pg_bindir || true)"
  if [ -z "$bindir" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    bindir="$(_pg_bindir || true)"
  fi
  if [ -z "$bindir" ]; then
    echo "start_postgres: no PostgreSQL server binaries (initdb) found; install Debian's postgresql package" >&2
    return 1
  fi
  PG_DIR="$(mktemp -d /tmp/runner-pg.XXXXXX)"
  if [ "$(id -u)" = 0 ]; then
    # initdb and postgres refuse to run as root: run them as the package's system user.
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
    chown postgres "$PG_DIR"
    run_as=(runuser -u postgres --)
  fi
  PG_PORT="$(_pg_free_port)"
  "${run_as[@]}" "$bindir/initdb" -D "$PG_DIR/data" -U runner --auth=trust -E UTF8 --no-sync >"$PG_DIR/initdb.log" 2>&1 || {
    cat "$PG_DIR/initdb.log" >&2
    return 1
  }
  # Durability is not wanted for a test server: no fsync makes table creation much faster.
  "${run_as[@]}" "$bindir/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
    -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    start >/dev/null || {
    cat "$PG_DIR/server.log" >&2
    return 1
  }
  PG_BINDIR="$bindir"
  PG_RUN_AS="${run_as[*]}"
  export RUNNER_TEST_POSTGRES_URL="postgresql://runner@127.0.0.1:$PG_PORT/postgres"
  trap stop_postgres EXIT
  echo "PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT ($PG_DIR)"
}

stop_postgres() {
  if [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR/data" ]; then
    # shellcheck disable=SC2086 # PG_RUN_AS is a command prefix or empty
    $PG_RUN_AS "$PG_BINDIR/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
  fi
  PG_DIR=""
}
