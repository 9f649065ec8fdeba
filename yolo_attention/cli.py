"""``yolo-attention`` command line: one sub-command per job, each owned by its module.

Sub-commands are imported lazily so ``yolo-attention list`` does not import ultralytics.
"""

from __future__ import annotations

import importlib
import sys
from typing import NamedTuple

from .extras import MissingExtra, require


class Command(NamedTuple):
    module: str  # where the command lives
    function: str  # its entry point, taking argv
    help: str  # one line
    needs: tuple[str, ...] = ()  # packages from optional extras it cannot run without


COMMANDS: dict[str, Command] = {
    "list": Command("yolo_attention.cli", "list_main", "list registered attention modules"),
    "bench": Command("yolo_attention.bench", "main", "params, FLOPs, time and memory of each module at YOLO shapes"),
    "yaml": Command("yolo_attention.integrations.yaml_gen", "main", "write a model YAML with attention inserted"),
    "cost": Command("yolo_attention.integrations.cost", "main", "params and FLOPs of a detector, attention ops included",
                    ("ultralytics",)),
    "yolo": Command("yolo_attention.integrations.ultralytics", "yolo_main", "ultralytics' `yolo` command with our modules",
                    ("ultralytics",)),
    "ablate": Command("yolo_attention.ablate", "main", "train variants side by side and report accuracy and cost",
                      ("ultralytics",)),
    "data": Command("yolo_attention.data", "main", "generate the embedded synthetic detection dataset"),
    "explain": Command("yolo_attention.explain", "main", "detections, CAMs and the attention modules' own maps, as pictures",
                       ("ultralytics", "matplotlib")),
}  # fmt: skip


def _usage() -> str:
    lines = ["usage: yolo-attention <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {cmd.help}" for name, cmd in COMMANDS.items()]
    lines += ["", "Run `yolo-attention <command> --help` for a command's options."]
    return "\n".join(lines)


def list_main(argv: list[str]) -> int:
    import argparse

    from .registry import list_attention

    parser = argparse.ArgumentParser(prog="yolo-attention list", description="List registered attention modules.")
    parser.parse_args(argv)
    import yolo_attention  # noqa: F401  (registers the built-ins)

    rows = [(i.name, i.yaml_name, i.kind, i.arxiv or "-", i.paper) for i in list_attention()]
    widths = [max(len(r[k]) for r in rows + [("name", "yaml name", "kind", "arXiv", "paper")]) for k in range(5)]
    for r in [("name", "yaml name", "kind", "arXiv", "paper"), *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"yolo-attention: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    cmd = COMMANDS[name]
    try:
        for package in cmd.needs:
            require(package, f"yolo-attention {name}")
        result = getattr(importlib.import_module(cmd.module), cmd.function)(rest)
    except MissingExtra as e:
        print(f"yolo-attention {name}: error: {e}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
