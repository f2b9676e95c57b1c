"""Lua scripts with named KEYS and ARGV.

Each script declares the keys and arguments it takes, by name and in order; its source gets
a header that lists them (``-- KEYS[1] job: …``, as rq does) and binds them to ``K.<name>`` and
``A.<name>``, so a body never indexes ``KEYS`` by number and a caller can't pass them in the
wrong order: ``BoundScript.__call__`` takes them by name and refuses a missing or unknown one.
Every key a script touches is passed in (none is built inside Lua), as Redis Cluster requires;
``tests/test_scripts.py`` checks that against what each script really touches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis


@dataclass(frozen=True)
class Script:
    """One Lua script: what it does, its named KEYS and ARGV, and its body.

    ``varargs`` names what follows the named ARGV (``field, value, …`` pairs), if anything;
    ``varkeys`` what follows the named KEYS (a batch's job hashes), read as ``KEYS[VARKEYS_AT + i]``.
    """

    name: str
    doc: str
    keys: tuple[str, ...]
    args: tuple[str, ...]
    body: str
    prelude: str = ""
    varargs: str = ""
    varkeys: str = ""

    def source(self) -> str:
        lines = [f"-- {self.name}: {self.doc}"]
        lines += [f"-- KEYS[{i}] {name}" for i, name in enumerate(self.keys, 1)]
        if self.varkeys:
            lines.append(f"-- KEYS[{len(self.keys) + 1}..] {self.varkeys}")
        lines += [f"-- ARGV[{i}] {name}" for i, name in enumerate(self.args, 1)]
        if self.varargs:
            lines.append(f"-- ARGV[{len(self.args) + 1}..] {self.varargs}")
        lines.append("local K = {" + ", ".join(f"{n} = KEYS[{i}]" for i, n in enumerate(self.keys, 1)) + "}")
        lines.append("local A = {" + ", ".join(f"{n} = ARGV[{i}]" for i, n in enumerate(self.args, 1)) + "}")
        lines.append(f"local VARARGS_AT = {len(self.args) + 1}")
        lines.append(f"local VARKEYS_AT = {len(self.keys) + 1}")
        return "\n".join(lines) + "\n" + self.prelude + self.body


class BoundScript:
    """A ``Script`` registered on one client; call it with keys and args by name."""

    def __init__(self, client: redis.Redis, script: Script) -> None:
        self.script = script
        self._call = client.register_script(script.source())

    def __call__(
        self,
        keys: Mapping[str, str],
        args: Mapping[str, object] | None = None,
        varargs: Sequence[object] = (),
        client: Any = None,
        varkeys: Sequence[str] = (),
    ) -> Any:
        """Run the script; ``client`` may be a pipeline (the reply then comes from ``execute``)."""
        s = self.script
        given = args or {}
        if len(keys) != len(s.keys) or len(given) != len(s.args):
            missing = sorted((set(s.keys) - set(keys)) | (set(s.args) - set(given)))
            unknown = sorted((set(keys) - set(s.keys)) | (set(given) - set(s.args)))
            raise TypeError(f"script {s.name}: missing {missing}, unknown {unknown}")
        argv = [_arg(given[name]) for name in s.args]
        argv += [_arg(v) for v in varargs]
        return self._call(keys=[*(keys[name] for name in s.keys), *varkeys], args=argv, client=client)


def _arg(value: object) -> str:
    """Floats in full precision (``repr``); everything else as ``str``."""
    return repr(value) if isinstance(value, float) else str(value)
