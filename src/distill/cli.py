"""`distill <recipe> [--config FILE|NAME] [key.sub=value ...] [--resume RUN_DIR]`, `distill report RUN_DIR`,
`distill ls [RECIPE]` and `distill cp RECIPE/NAME DEST` (the named configs shipped with the package)."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

from distill.config import CONFIGS, describe, load_config, named_configs
from distill.context import Recipe, recipes
from distill.errors import DistillError
from distill.run import RunDir

USAGE = (
    "usage: distill RECIPE [--config FILE|NAME] [key=value ...] | distill report RUN_DIR | distill ls [RECIPE] | "
    "distill cp RECIPE/NAME DEST"
)


def _summary(recipe: Recipe) -> str:
    doc = (recipe.Config.__doc__ or "").strip() or (getattr(recipe, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def _recipe_help(name: str, recipe: Recipe) -> str:
    rows = describe(recipe.Config)
    width = max(len(r[0]) for r in rows)
    configs = named_configs(name)
    lines = [
        f"usage: distill {name} [--config FILE|NAME] [key.sub=value ...] [--resume RUN_DIR]",
        *[
            f"       distill {name} {c} ...  ({(f.__doc__ or '').strip().splitlines()[0]})"
            for c, f in getattr(recipe, "commands", {}).items()
        ],
        "",
        _summary(recipe),
        "",
        "options:",
        "  --config FILE     YAML file of field values, or a named config: "
        + (", ".join(configs) if configs else "(none shipped)"),
        "  --resume RUN_DIR  continue an interrupted run from its last checkpoint",
        "",
        "fields (override any with key.sub=value; lists by index, e.g. objective.0.weight=0.5):",
    ]
    for key, typ, default, desc in rows:
        if typ == "section":
            lines.append(f"  {key}:{'  ' + desc if desc else ''}")
            continue
        extra = f" [default: {default}]" if default != "" else ""
        lines.append(f"  {key.ljust(width)}  {typ}{extra}  {desc}")
    return "\n".join(lines)


def _run_recipe(name: str, recipe: Recipe, argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        print(_recipe_help(name, recipe))
        return 0
    commands = getattr(recipe, "commands", {})  # a recipe's own subcommands: distill socratic ask ...
    if argv and argv[0] in commands:
        return commands[argv[0]](argv[1:])
    parser = argparse.ArgumentParser(prog=f"distill {name}", add_help=False)
    parser.add_argument("--config")
    parser.add_argument("--resume")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.resume:
        if args.config or args.overrides:
            raise DistillError("--resume takes no --config or overrides: the run continues with its saved config")
        run = RunDir.open(args.resume)  # a clear error for a path that is not a run
        if run.recipe() not in (None, name):
            raise DistillError(
                f"{run.path} is a run of distill {run.recipe()}; resume it with "
                f"distill {run.recipe()} --resume {run.path}"
            )
        cfg = load_config(recipe.Config, run.path / "config.yaml")
    else:
        cfg = load_config(recipe.Config, args.config, args.overrides, recipe=name)
    result = recipe.run(cfg, resume=args.resume)
    if not result.is_main:
        return 0  # under `accelerate launch`, one process speaks
    print(recipe.table(result))
    print(f"\nrun directory: {result.run_dir}  (report: {result.run_dir}/report.md)")
    return 0


def _ls(rest: list[str], known: dict[str, Recipe]) -> int:
    """The recipes and their named configs (as torchtune's `tune ls`)."""
    names = rest or list(known)
    for name in names:
        if name not in known:
            raise DistillError(f"unknown recipe {name!r}; choose one of {sorted(known)}")
        print(f"{name:10s} {_summary(known[name])}")
        for config in named_configs(name):
            print(f"{'':10s} {name}/{config}")
    return 0


def _cp(rest: list[str], known: dict[str, Recipe]) -> int:
    """Copy a named config out to edit it (as torchtune's `tune cp`)."""
    if len(rest) != 2 or "/" not in rest[0]:
        raise DistillError("usage: distill cp RECIPE/NAME DEST (see distill ls)")
    (recipe, name), dest = rest[0].split("/", 1), Path(rest[1])
    if recipe not in known:
        raise DistillError(f"unknown recipe {recipe!r}; choose one of {sorted(known)}")
    if name not in named_configs(recipe):
        raise DistillError(f"{recipe} has no named config {name!r}; it has {named_configs(recipe)}")
    source = CONFIGS / recipe / f"{name}.yaml"  # the shipped one, whatever lies in the working directory
    if dest.is_dir():
        dest = dest / source.name
    if dest.exists():
        raise DistillError(f"{dest} exists already; remove it or choose another destination")
    if not dest.parent.is_dir():
        raise DistillError(f"{dest.parent} is not a directory; create it first or choose another destination")
    shutil.copyfile(source, dest)
    print(dest)
    return 0


FIXES = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space",
    errno.EROFS: "choose a writable run.output_dir",
    errno.EACCES: "choose a writable run.output_dir (or fix the permissions)",
    errno.EPERM: "choose a writable run.output_dir (or fix the permissions)",
    errno.ENAMETOOLONG: "choose a shorter run.run_name or run.output_dir",
}


def os_problem(e: OSError, resume: Path | None = None) -> str:
    """An OSError as one line: what the system said, where, and what to do about it (resume `resume`: what was
    saved before is whole, every write being atomic)."""
    where = f" ({e.filename})" if e.filename else ""
    what = e.strerror or str(e) or type(e).__name__
    fix = FIXES.get(e.errno or -1)
    if resume is not None:
        fix = f"{fix + ', then ' if fix else ''}continue with --resume {resume}"
    return f"{what}{where}" + (f"; {fix}" if fix else "")


def _resumable() -> Path | None:
    """The run this process was writing, unless it held nothing yet (then it is removed)."""
    return None if RunDir.active is None or _discard_empty_run() else RunDir.active.path


def _discard_empty_run() -> bool:
    """Remove the run this process made when it failed before writing anything but its config (a refusal found
    after the start: a bad cache, no kept decomposition); True when it did."""
    run = RunDir.active
    if run is None or not getattr(run, "fresh", False) or not run.holds_nothing_yet():
        return False
    run.close()
    shutil.rmtree(run.path, ignore_errors=True)
    return True


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, `kill`): unwound like Ctrl-C, so files are closed and the lock released."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    main_thread = threading.current_thread() is threading.main_thread()  # signals are set in the main thread only
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        known = recipes()
        if not argv or argv[0] in ("-h", "--help"):
            print(USAGE)
            print("\nrecipes:\n" + "\n".join(f"  {n:10s} {_summary(r)}" for n, r in known.items()))
            return 0 if argv else 2
        command, rest = argv[0], argv[1:]
        if command == "report":
            if len(rest) != 1:
                raise DistillError("usage: distill report RUN_DIR")
            from distill.report import write_report

            print(write_report(rest[0]))
            return 0
        if command == "ls":
            return _ls(rest, known)
        if command == "cp":
            return _cp(rest, known)
        if command not in known:
            raise DistillError(f"unknown command {command!r}; choose one of {sorted(known)}, 'report', 'ls' or 'cp'")
        return _run_recipe(command, known[command], rest)
    except DistillError as e:
        _discard_empty_run()
        print(f"distill: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system's refusals: a full disk, a read-only folder, a name too long
        if os.environ.get("DISTILL_TRACEBACK"):
            raise
        print(f"distill: error: {os_problem(e, _resumable())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (see _terminate)
        run = _resumable()
        where = f"continue with --resume {run}" if run is not None else "nothing was saved yet"
        print(f"distill: interrupted; {where}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        if RunDir.active is not None:  # a run that ended in an error: its lock is free for the resume
            RunDir.active.close()


if __name__ == "__main__":
    sys.exit(main())
