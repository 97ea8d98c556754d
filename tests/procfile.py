"""The Procfile's commands, for tests that start the product the way production does."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

PROCFILE = Path(__file__).resolve().parent.parent / "Procfile"


def procfile_web_command(port: int) -> list[str]:
    """The Procfile's web command on 127.0.0.1:port, run with this interpreter.

    Shell parts are resolved as the shell would: ``${VAR:-default}`` takes its default
    (HOST and PORT are set here), ``exec`` and leading ``NAME=value`` assignments go.
    """
    line = next(line for line in PROCFILE.read_text().splitlines() if line.startswith("web:"))
    command = line.removeprefix("web:").strip()
    command = re.sub(r"\$\{HOST:-[^}]*\}", "127.0.0.1", command)
    command = re.sub(r"\$\{PORT:-[^}]*\}", str(port), command)
    command = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", command)
    words = shlex.split(command)
    while words and (words[0] == "exec" or re.fullmatch(r"[A-Z_]+=\S*", words[0])):
        words.pop(0)
    program, *args = words
    return [sys.executable, "-m", program, *args]
