"""User modules that register components: ``learnreg run --import mymodule``, the
config's ``imports:`` key, and the ``learnreg.components`` entry-point group.

Importing a module runs its code, so this is the one place learnreg does it, and it does
it only by module name, never from a file path, and only for modules *the user* named:

* ``--import NAME`` (and ``learnreg.run(..., imports=[...])``, an ``imports=[...]``
  override, or a config given as a Python mapping) is the user naming a module. It is
  imported from the user's environment (``sys.path``, plus the working directory, as
  ``python -m`` does) and remembered as trusted in :func:`trust_file`.
* A file's ``imports:`` list (a YAML config, or the ``config.yaml`` a run directory
  records so that ``describe``, ``eval``, ``plot`` and a resume rebuild the same custom
  components) is imported only when every name in it is trusted: passed with
  ``--import`` now or once before. Otherwise nothing is imported and the command stops
  with one ``error:`` line naming the module and the flag that trusts it. So a config or
  a run directory received from someone else never runs code by itself, not even a module
  that happens to be installed. Recorded names are also never looked up in the working
  directory or inside the run directory itself.
* Installed packages may declare ``[project.entry-points."learnreg.components"]``
  ``name = "package.module"``; :func:`load_entry_points` imports those modules.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from learnreg.errors import ConfigError

ENTRY_POINT_GROUP = "learnreg.components"
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


_TRUSTED_NOW: set[str] = set()


def trust_file() -> Path:
    """Where the modules the user named with ``--import`` are remembered:
    ``$LEARNREG_HOME/trusted_imports.txt`` (default ``~/.config/learnreg``)."""
    home = (
        os.environ.get("LEARNREG_HOME")
        or Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "learnreg"
    )
    return Path(home) / "trusted_imports.txt"


def trusted() -> set[str]:
    """The module names the user has named with ``--import``, in this process or before."""
    try:
        lines = trust_file().read_text().splitlines()
    except OSError:
        lines = []
    return _TRUSTED_NOW | {line.strip() for line in lines if _MODULE_NAME.match(line.strip())}


def trust(names: Iterable[str]) -> None:
    """Remember ``names`` as modules the user named (``--import``); see :func:`trust_file`.

    A trust file that cannot be written only means the names are trusted in this process.
    """
    names = [n for n in names if isinstance(n, str) and _MODULE_NAME.match(n)]
    new = [n for n in names if n not in trusted()]
    _TRUSTED_NOW.update(names)
    if not new:
        return
    path = trust_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write("".join(f"{n}\n" for n in new))
    except OSError:
        pass


def import_modules(
    names: Iterable[str],
    recorded_in: str | Path | None = None,
    named_in: str | Path | None = None,
) -> None:
    """Import the modules that register a run's custom components.

    Args:
        names: dotted module names (``mymodule``, ``mypkg.components``).
        recorded_in: the run directory the names were read from. Recorded names are not
            looked up in the working directory, and a module that would load from inside
            ``recorded_in`` is refused.
        named_in: the config file the names were read from.

        With both None the user named the modules (``--import``): they are trusted.
        Otherwise every name must already be trusted, or nothing is imported.

    Raises:
        ConfigError: a name that is not a module name, an untrusted name read from a file,
            a module that cannot be found or lies inside the run directory, or one that
            fails while importing.
    """
    names = list(names)
    for name in names:
        if not isinstance(name, str) or not _MODULE_NAME.match(name):
            raise ConfigError(
                f"imports: {name!r} is not a module name; list dotted names like `mymodule`, "
                "not file paths."
            )
    source = recorded_in and Path(recorded_in) / "config.yaml" or named_in
    if source is None:
        trust(names)
    else:
        untrusted = [n for n in names if n not in trusted()]
        if untrusted:
            flags = " ".join(f"--import {n}" for n in untrusted)
            raise ConfigError(
                f"{source} asks to import {', '.join(map(repr, untrusted))}; importing a "
                f"module runs its code, and learnreg imports only modules you named "
                f"yourself. If you trust it, pass {flags} (once: it is then remembered in "
                f"{trust_file()})."
            )
    for name in names:
        if name in sys.modules:
            continue
        if recorded_in is None:
            _with_working_directory(name)
        else:
            _check_outside(name, Path(recorded_in))
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                where = f"recorded in {recorded_in}/config.yaml " if recorded_in else ""
                raise ConfigError(
                    f"cannot import module {name!r} {where}(it registers this run's custom "
                    "components): put its folder on PYTHONPATH or install it."
                ) from None
            raise
        except ConfigError:
            raise
        except Exception as exc:  # the user's module is broken: say which one
            raise ConfigError(
                f"importing module {name!r} failed: {type(exc).__name__}: {exc}"
            ) from exc


def _with_working_directory(name: str) -> None:
    """Let ``learnreg run --import mod`` find ``./mod.py`` as ``python -m`` would."""
    cwd = os.getcwd()
    if importlib.util.find_spec(name.split(".")[0]) is None and cwd not in sys.path:
        sys.path.append(cwd)


def _check_outside(name: str, run_dir: Path) -> None:
    try:
        spec = importlib.util.find_spec(name.split(".")[0])
    except (ImportError, ValueError):
        spec = None
    origin = getattr(spec, "origin", None)
    if origin and Path(origin).resolve().is_relative_to(run_dir.resolve()):
        raise ConfigError(
            f"{run_dir}/config.yaml imports {name!r}, which would load from inside the run "
            f"directory ({origin}); learnreg does not run code a run directory brings. "
            "Install the module or put its folder on PYTHONPATH outside the run directory."
        )


def import_recorded(run_dir: str | Path) -> list[str]:
    """Import the modules a run directory's ``config.yaml`` lists under ``imports``.

    Args:
        run_dir: a run directory written by ``learnreg run``.

    Returns:
        The module names imported (empty when the config has none or there is no config).
    """
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return []
    try:
        names = (yaml.safe_load(path.read_text()) or {}).get("imports") or []
    except (yaml.YAMLError, AttributeError):
        return []  # the caller's own reading of the config reports it
    if not isinstance(names, list):
        raise ConfigError(f"{path}: `imports` must be a list of module names, got {names!r}")
    import_modules(names, recorded_in=run_dir)
    return names


def load_entry_points() -> list[str]:
    """Import every module declared in the ``learnreg.components`` entry-point group.

    Returns:
        The module names imported.
    """
    modules = [
        ep.value.split(":")[0] for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    ]
    for module in modules:
        importlib.import_module(module)
    return modules
