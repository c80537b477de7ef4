"""`python -m bench [--smoke] [--only NAME ...]`: run the benchmarks, write results and the page."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from bench import ctl, e2e, enforce, fleet, memory, pipeline, reports, scrape, stall
from bench.common import RESULTS, Result, machine, write_result
from bench.page import PAGE, render

BENCHMARKS: dict[str, Callable[[str], Result]] = {
    "pipeline": pipeline.run,
    "e2e": e2e.run,
    "reports": reports.run,
    "stall": stall.run,
    "memory": memory.run,
    "ctl": ctl.run,
    "scrape": scrape.run,
    "fleet": fleet.run,
    "enforce": enforce.run,
}


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM unwinds like an exception, so every namespace and process is torn down.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen benchmarks; exit 1 when one of them failed to run (not a missed target)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (what make test runs)")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON output directory")
    parser.add_argument("--page", type=Path, default=PAGE, help="performance page to write")
    parser.add_argument(
        "--render", action="store_true", help="only rewrite the page from --results"
    )
    args = parser.parse_args(argv)
    if args.render:
        return _render(args.results, args.page)
    signal.signal(signal.SIGTERM, _terminate)
    scale = "smoke" if args.smoke else "full"
    results: dict[str, Result] = {}
    failed = False
    for name in args.only:
        start = time.monotonic()
        print(f"bench: {name} ...", flush=True)
        try:
            result = BENCHMARKS[name](scale)
        except Exception:
            traceback.print_exc()
            result = {"error": traceback.format_exc(limit=3), "targets": []}
            failed = True
        result["seconds"] = round(time.monotonic() - start, 1)
        results[name] = result
        write_result(name, {"machine": machine(), "scale": scale, **result}, args.results)
        _print_targets(name, result)
    if set(args.only) == set(BENCHMARKS):
        args.page.parent.mkdir(parents=True, exist_ok=True)
        args.page.write_text(render(results, machine(), scale))
        print(f"bench: wrote {args.page}")
    return 1 if failed else 0


def _render(directory: Path, page: Path) -> int:
    """Rewrite the page from the JSON results already written."""
    results = {}
    for name in BENCHMARKS:
        path = directory / f"{name}.json"
        if path.exists():
            results[name] = json.loads(path.read_text())
    first = next(iter(results.values()))
    page.write_text(render(results, first["machine"], first["scale"]))
    print(f"bench: wrote {page}")
    return 0


def _print_targets(name: str, result: Result) -> None:
    if "skipped" in result:
        print(f"  skipped: {result['skipped']}")
    for t in result.get("targets", []):
        mark = "met" if t["met"] else "MISSED"
        print(f"  {mark:6} {t['name']}: {t['value']:,.2f} {t['unit']} ({t['op']} {t['limit']:,})")
    print(f"  ({result['seconds']} s)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
