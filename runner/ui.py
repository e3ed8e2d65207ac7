"""``python -m runner.ui``: the MLflow UI on the project's tracking store, on 127.0.0.1 only.

Runs ``mlflow ui`` as a child process (one worker, background job runner off:
this is a viewer, not a shared server), waits until it answers, prints the URL
of each study's trial runs (best first, its searched params as columns), and
stops it and all its processes on Ctrl-C.

Exit codes: 0 stopped by Ctrl-C or SIGTERM, 1 the server failed, 2 bad input
(no tracking store, port taken).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from runner.cli import OneLineParser, command_name, run_command, shared_flags, sigterm_as_interrupt
from runner.errors import ConfigError, WorkFailed
from runner.redact import redact_url

log = logging.getLogger("runner")

HOST = "127.0.0.1"
DEFAULT_PORT = 5000
START_TIMEOUT_S = 120.0


class ServerFailed(WorkFailed):
    """The MLflow UI did not start or died (exit 1)."""


PROG = "python -m runner.ui"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """Command-line flags; ``prog`` is the command as typed (``runner ui`` from the ``runner`` command)."""
    p = OneLineParser(
        prog=prog,
        description="Start the MLflow UI on the project's tracking store (http://127.0.0.1:PORT); Ctrl-C stops it.",
        parents=[shared_flags(debug_help="show the MLflow server's own log and tracebacks")],
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port on 127.0.0.1 (default %(default)s)")
    return p


def check_port(port: int) -> None:
    """A port we can bind on 127.0.0.1, or a ConfigError saying which flag to change."""
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port must be between 1 and 65535, got {port}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the server itself binds (uvicorn sets SO_REUSEADDR): a UI stopped a moment ago leaves
        # connections in TIME_WAIT, which must not read as "in use"; a listening process still does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            raise ConfigError(f"port {port} on {HOST} is in use: pass --port N") from None


def server_command(port: int) -> list[str]:
    """The ``mlflow ui`` command line; the store goes in the environment (``server_env``), not here."""
    return [
        sys.executable, "-m", "mlflow", "ui",
        "--host", HOST, "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip


def server_env(tracking_uri: str) -> dict[str, str]:
    """The server's environment: the store URI travels as ``MLFLOW_BACKEND_STORE_URI``.

    A URI with a password on the command line would be readable by every user through ``ps``;
    the environment of a process is readable only by its owner.
    """
    return {**os.environ, "MLFLOW_BACKEND_STORE_URI": tracking_uri, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def start(tracking_uri: str, port: int, log_file) -> subprocess.Popen:
    """Start the server in its own process group, so that stopping it stops all its children."""
    return subprocess.Popen(
        server_command(port), env=server_env(tracking_uri), stdout=log_file, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def wait_until_up(proc: subprocess.Popen, url: str, timeout: float = START_TIMEOUT_S) -> None:
    """Poll ``/health`` until it answers; raise ServerFailed if the server exits or never answers."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerFailed(f"the MLflow UI exited with code {proc.returncode}")
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise ServerFailed(f"the MLflow UI did not answer within {timeout:.0f} s")


def stop(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever is left after ``grace`` seconds."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # workers that outlived their parent
    except ProcessLookupError:
        pass


def study_pages(tracking_uri: str, base_url: str) -> list[tuple[str, str]]:
    """(study, URL of its trial runs: best first, the searched params as columns) for every study in the store."""
    from runner.record.history import list_studies
    from runner.record.runs import trial_runs_link

    return [(name, f"{base_url}/{trial_runs_link(tracking_uri, eid)}") for name, eid in list_studies(tracking_uri)]


def _tail(log_file) -> str:
    log_file.seek(0)
    lines = [line.strip() for line in log_file.read().decode(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def serve(tracking_uri: str, port: int, debug: bool) -> int:
    """Run the UI until Ctrl-C or SIGTERM."""
    url = f"http://{HOST}:{port}"
    with tempfile.TemporaryFile() as server_log:
        proc = start(tracking_uri, port, None if debug else server_log)
        try:
            log.info("starting the MLflow UI on %s (store %s)", url, redact_url(tracking_uri))
            try:
                wait_until_up(proc, url)
            except ServerFailed as err:
                raise ServerFailed(f"{err}: {_tail(server_log)}") from None
            sys.stdout.write(f"MLflow UI: {url}\n")
            for study, page in study_pages(tracking_uri, url):
                sys.stdout.write(f"  study {study}: {page}\n")
            sys.stdout.write("press Ctrl-C to stop\n")
            sys.stdout.flush()
            code = proc.wait()
            raise ServerFailed(f"the MLflow UI exited with code {code}: {_tail(server_log)}")
        except KeyboardInterrupt:
            stop(proc)
            print("runner.ui: stopped", file=sys.stderr)
            return 0
        finally:
            stop(proc)


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """CLI entry point; returns the exit code. ``prog``: the command as typed, for help and errors."""
    args = build_parser(prog).parse_args(argv)

    def work() -> int:
        check_port(args.port)
        from runner.record import store

        uri = store.resolve_tracking_uri(args.tracking_uri)
        store.check_store_exists(uri)
        return serve(uri, args.port, args.debug)

    # SIGTERM stops the server like Ctrl-C, and Ctrl-C must stop it even when started from a shell
    # that ignores SIGINT in background jobs.
    with sigterm_as_interrupt(sigint=True):
        return run_command(command_name(prog), work, args.debug, on_interrupt="stopped", interrupt_code=0, quiet=False)


if __name__ == "__main__":
    sys.exit(main())
