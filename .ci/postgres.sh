# shellcheck shell=bash
# Source this file, then `start_postgres`: a throwaway PostgreSQL server on loopback for the tests.
#
# Installs Debian's package when no server binaries are found (root + apt only), initialises a
# cluster in a temporary 0700 folder as a non-root user (PostgreSQL refuses to run as root), starts
# it on a free port and exports RUNNER_TEST_POSTGRES_URL (superuser "runner", no password in it).
# Every connection, local or over TCP, needs the password (scram-sha-256): a random one made for
# this run, handed to clients in a 0600 pgpass file exported as PGPASSFILE (libpq reads it), so no
# other local user can log in as the superuser, and no URL or command line shows the password.
# `stop_postgres` stops the server and removes the folder; start_postgres registers it on EXIT
# before it starts anything, so a failed start leaves nothing behind either.

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
  local bindir password run_as=()
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
  # Cleanup first: whatever fails from here on (initdb, the start), the folder and server go on exit.
  trap stop_postgres EXIT
  PG_BINDIR="$bindir"
  PG_RUN_AS=""
  PG_DIR="$(mktemp -d /tmp/runner-pg.XXXXXX)"
  chmod 0700 "$PG_DIR" # mktemp -d makes it 0700 already; say so, the password files rely on it
  if [ "$(id -u)" = 0 ]; then
    # initdb and postgres refuse to run as root: run them as the package's system user.
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
    chown postgres "$PG_DIR"
    # From its own folder: the caller's working directory (a 0700 mktemp clone, say) may be closed to it.
    run_as=(runuser -u postgres -- env -C "$PG_DIR")
    PG_RUN_AS="${run_as[*]}"
  fi
  PG_PORT="$(_pg_free_port)"
  # URL-safe characters only: nothing that pgpass (":" and "\") or a shell would need escaped.
  password="$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
  (
    umask 077
    printf '%s\n' "$password" >"$PG_DIR/pwfile"
    printf '127.0.0.1:%s:*:runner:%s\nlocalhost:%s:*:runner:%s\n' "$PG_PORT" "$password" "$PG_PORT" "$password" \
      >"$PG_DIR/pgpass"
  )
  # initdb runs as the server's user: it must read the password file (the pgpass file stays the caller's).
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$PG_DIR/pwfile"
  fi
  "${run_as[@]}" "$bindir/initdb" -D "$PG_DIR/data" -U runner --pwfile="$PG_DIR/pwfile" \
    --auth-local=scram-sha-256 --auth-host=scram-sha-256 -E UTF8 --no-sync >"$PG_DIR/initdb.log" 2>&1 || {
    cat "$PG_DIR/initdb.log" >&2
    return 1
  }
  rm -f "$PG_DIR/pwfile"
  # Durability is not wanted for a test server: no fsync makes table creation much faster.
  "${run_as[@]}" "$bindir/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
    -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    start >/dev/null || {
    cat "$PG_DIR/server.log" >&2
    return 1
  }
  export PGPASSFILE="$PG_DIR/pgpass"
  export RUNNER_TEST_POSTGRES_URL="postgresql://runner@127.0.0.1:$PG_PORT/postgres"
  echo "PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT ($PG_DIR)"
}

stop_postgres() {
  if [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR" ]; then
    if [ -d "$PG_DIR/data" ]; then
      # shellcheck disable=SC2086 # PG_RUN_AS is a command prefix or empty
      $PG_RUN_AS "$PG_BINDIR/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$PG_DIR"
    if [ "${PGPASSFILE:-}" = "$PG_DIR/pgpass" ]; then
      unset PGPASSFILE
    fi
  fi
  PG_DIR=""
}
