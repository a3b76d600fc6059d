"""`distill <recipe> [--config FILE] [key.sub=value ...] [--resume RUN_DIR]` and `distill report RUN_DIR`."""

from __future__ import annotations

import argparse
import sys

from distill.config import describe, load_config
from distill.errors import DistillError
from distill.run import RunDir


def _recipe_help(name: str, module) -> str:
    rows = describe(module.Config)
    width = max(len(r[0]) for r in rows)
    lines = [
        f"usage: distill {name} [--config FILE] [key.sub=value ...] [--resume RUN_DIR]",
        "",
        (module.__doc__ or "").strip().splitlines()[0],
        "",
        "options:",
        "  --config FILE     YAML file of field values (see configs/)",
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


def _run_recipe(name: str, argv: list[str]) -> int:
    from distill.recipes import RECIPES

    module = RECIPES[name]
    if "-h" in argv or "--help" in argv:
        print(_recipe_help(name, module))
        return 0
    parser = argparse.ArgumentParser(prog=f"distill {name}", add_help=False)
    parser.add_argument("--config")
    parser.add_argument("--resume")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.resume:
        if args.config or args.overrides:
            raise DistillError("--resume takes no --config or overrides: the run continues with its saved config")
        run = RunDir.open(args.resume)  # a clear error for a path that is not a run
        cfg = load_config(module.Config, run.path / "config.yaml")
    else:
        cfg = load_config(module.Config, args.config, args.overrides)
    result = module.run(cfg, resume=args.resume)
    if not result.get("is_main", True):
        return 0  # under `accelerate launch`, one process speaks
    print(module.table(result))
    print(f"\nrun directory: {result['run_dir']}  (report: {result['run_dir']}/report.md)")
    return 0


def main(argv: list[str] | None = None) -> int:
    from distill.recipes import RECIPES

    argv = list(sys.argv[1:] if argv is None else argv)
    usage = f"usage: distill {{{','.join(RECIPES)}}} [--config FILE] [key=value ...] | distill report RUN_DIR"
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        print(
            "\nrecipes:\n"
            + "\n".join(f"  {n:8s} {(m.__doc__ or '').strip().splitlines()[0]}" for n, m in RECIPES.items())
        )
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    try:
        if command == "report":
            if len(rest) != 1:
                raise DistillError("usage: distill report RUN_DIR")
            from distill.report import write_report

            print(write_report(rest[0]))
            return 0
        if command not in RECIPES:
            raise DistillError(f"unknown command {command!r}; choose one of {sorted(RECIPES)} or 'report'")
        return _run_recipe(command, rest)
    except DistillError as e:
        print(f"distill: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distill: interrupted; continue with --resume RUN_DIR", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
