"""``runner``: one command, five verbs, each the same as its ``python -m runner.<verb>`` form.

``runner sweep`` runs a study, ``runner export`` ships its best trial, ``runner predict``
scores sentence pairs, ``runner report`` compares trials, ``runner ui`` opens MLflow's UI.
Each verb's own flags and exit codes are its module's (``runner VERB --help``).
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "sweep": "run an Optuna sweep, every trial tracked in MLflow",
    "export": "verify, save and register a study's best trial",
    "predict": "score sentence pairs with an exported or registered model",
    "report": "compare the trials of one or more studies",
    "ui": "open the MLflow UI on the project's tracking store",
}
USAGE = "usage: runner {" + ",".join(COMMANDS) + "} [--help] ..."


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``runner VERB ARGS`` to ``runner.VERB.main(ARGS)``; returns the exit code.

    The verb's module is imported only when chosen: ``runner ui`` does not load the ML libraries.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        lines = [USAGE, "", "Fine-tune Hugging Face models in an Optuna sweep tracked in MLflow.", "", "commands:"]
        lines += [f"  {name:<8} {text}" for name, text in COMMANDS.items()]
        lines += ["", "runner VERB --help shows a command's flags."]
        print("\n".join(lines), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    verb, rest = args[0], args[1:]
    if verb not in COMMANDS:
        print(f"runner: error: unknown command {verb!r} (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    # Its help and its errors then name the command as typed: "runner sweep", not the module.
    return importlib.import_module(f"runner.{verb}").main(rest, prog=f"runner {verb}")


if __name__ == "__main__":
    sys.exit(main())
