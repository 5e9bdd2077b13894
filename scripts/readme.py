"""Regenerate README.md's blocks that restate the code, or check that they are current.

    python scripts/readme.py --write    rewrite the blocks in place
    python scripts/readme.py --check    exit 1 (with a diff) when a block differs from the code

Blocks sit between `<!-- generated:NAME -->` and `<!-- /generated:NAME -->`:
  tools           the tool table: name, toolset, annotations, the description's first sentence,
                  in tools/list order with every toolset on
  ticket-states   the ticket state machine, from crm_mcp.tools.tickets.TRANSITIONS
Everything outside the markers is left as written. Needs the package installed (pip install -e .)."""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Callable
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _first_sentence(description: str) -> str:
    paragraph = " ".join(description.split("\n\n")[0].split())
    match = re.match(r"(.+?[.!?])(?:\s|$)", paragraph)
    return (match.group(1) if match else paragraph).replace("|", "\\|")


def tools_block() -> str:
    from crm_mcp.server.registration import selected_specs

    yes = {True: "yes", False: "no"}
    lines = [
        "| tool | toolset | read-only | destructive | idempotent | what it does |",
        "|---|---|---|---|---|---|",
    ]
    for spec in selected_specs("all", read_only=False):
        a = spec.annotations
        lines.append(
            f"| `{spec.name}` | {spec.toolset} | {yes[bool(a.read_only_hint)]} | {yes[bool(a.destructive_hint)]} "
            f"| {yes[bool(a.idempotent_hint)]} | {_first_sentence(spec.description)} |"
        )
    return "\n".join(lines)


def state_machine_block() -> str:
    from crm_mcp.tools.tickets import TRANSITIONS

    width = max(map(len, TRANSITIONS))
    lines = [f"{status.ljust(width)} -> {' | '.join(legal) or '(final)'}" for status, legal in TRANSITIONS.items()]
    return "\n".join(["```", *lines, "```"])


BLOCKS: dict[str, Callable[[], str]] = {"tools": tools_block, "ticket-states": state_machine_block}


class MarkerError(Exception):
    pass


def render(text: str) -> str:
    """The README with every generated block replaced by what the code says now."""
    for name, build in BLOCKS.items():
        start, end = f"<!-- generated:{name} -->", f"<!-- /generated:{name} -->"
        pattern = re.compile(re.escape(start) + r"\n.*?" + re.escape(end), re.DOTALL)
        if len(pattern.findall(text)) != 1:
            raise MarkerError(f"README must hold exactly one {start} ... {end} pair (each marker on its own line)")
        text = pattern.sub(lambda _: f"{start}\n{build()}\n{end}", text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite the generated blocks in place")
    mode.add_argument("--check", action="store_true", help="exit 1 when a generated block is out of date")
    parser.add_argument("--readme", type=Path, default=README, help=f"the file to check or write (default {README})")
    args = parser.parse_args(argv)

    current = args.readme.read_text(encoding="utf-8")
    try:
        wanted = render(current)
    except MarkerError as exc:
        print(f"{args.readme}: {exc}", file=sys.stderr)
        return 1
    if args.write:
        if wanted != current:
            args.readme.write_text(wanted, encoding="utf-8")
            print(f"{args.readme}: generated blocks updated")
        return 0
    if wanted == current:
        return 0
    stale = [name for name, build in BLOCKS.items() if f"<!-- generated:{name} -->\n{build()}\n" not in current]
    diff = difflib.unified_diff(current.splitlines(), wanted.splitlines(), "README.md (committed)", "README.md (from code)", lineterm="", n=1)
    print("\n".join(diff), file=sys.stderr)
    print(
        f"{args.readme} is out of date: block(s) {', '.join('generated:' + s for s in stale)} differ from the code. "
        f"Run `python scripts/readme.py --write` and commit README.md.",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
