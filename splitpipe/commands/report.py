"""``splitpipe report REPORT.json [--plot PNG]``: summarise and draw a report the agent wrote."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report",
        help="summarise an agent report (splitpipe agent --report) and draw it",
        description=(
            "Print the summary of a report that `splitpipe agent --report` wrote (on this machine or "
            "copied from a device), and with --plot draw it: latency per frame by split, where each "
            "frame's time went, and throughput. See docs/agent.md."
        ),
    )
    parser.add_argument("report", type=Path, metavar="REPORT", help="the report JSON")
    parser.add_argument(
        "--plot", type=Path, metavar="PNG", help="draw the run to this file (.png, .svg or .pdf)"
    )
    parser.add_argument("--json", action="store_true", help="print the report's summary as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from splitpipe.edge.report import load_report, summary_lines
    from splitpipe.errors import SplitpipeError, check_plot_file

    if args.plot is not None:
        check_plot_file(args.plot, example="run.png")
    data = load_report(args.report)
    if args.json:
        print(json.dumps(data["summary"], indent=2))
    else:
        try:  # a summary edited or written by something else: one line, not a traceback
            lines = summary_lines(data["summary"], data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SplitpipeError(
                f"{args.report}: its summary is not one splitpipe agent writes "
                f"({type(exc).__name__}: {exc}); see docs/agent.md"
            ) from None
        for line in lines:
            print(line)
    if args.plot is not None:
        from splitpipe.edge.plot import plot_report

        print(f"plot written to {plot_report(data, args.plot)}")
    return 0
