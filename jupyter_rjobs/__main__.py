"""``python -m jupyter_rjobs demo``: a scripted IPython session showing the %rjob magics."""

from __future__ import annotations

import argparse
import sys
import time

DEMO_CELLS = [
    "%load_ext jupyter_rjobs",
    "%%rjob start --thread --name crunch\n"
    "import time\n"
    "for i in range(3):\n"
    "    print('step', i); time.sleep(0.5)\n"
    "sum(range(10**6))",
    "print('the notebook is free while crunch runs')",
    "data = list(range(100))",
    "%%rjob start --name squares\n"
    "# a separate process; `data` is sent automatically (PowerShell's $using:)\n"
    "import os\n"
    "print('worker pid', os.getpid())\n"
    "sum(x * x for x in data)",
    "%rjob list",
    "%rjob wait crunch squares --timeout 10",
    "%rjob receive crunch",
    "%rjob receive crunch   # nothing new: prints nothing, returns None",
    "%rjob receive squares --keep",
    "%%rjob start --name forever\nimport time\nwhile True:\n    time.sleep(0.1)",
    "%rjob wait forever --timeout 0.5",
    "%rjob stop forever",
    "%rjob start --thread --name oops --out oops -- 1 / 0",
    "%rjob wait oops",
    "print(oops.state, '-', oops.error)   # a job that raises is Failed; receive shows its traceback",
    "%rjob list",
    "%rjob remove --state Completed",
    "%rjob remove --state Failed",
    "%rjob list",
]


def demo(pause: float = 0.0) -> int:
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance(colors="NoColor")
    ok = True
    for number, cell in enumerate(DEMO_CELLS, start=1):
        shown = cell.replace("\n", "\n   ...: ")
        print(f"\nIn [{number}]: {shown}")
        result = shell.run_cell(cell, store_history=True)
        if result.error_in_exec is not None:
            ok = False
        sys.stdout.flush()
        time.sleep(pause)
    shell.run_line_magic("unload_ext", "jupyter_rjobs")
    print("\nDemo finished: every job above ran while the session stayed free." if ok else "\nDemo had errors.")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jupyter_rjobs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo_parser = sub.add_parser("demo", help="run a scripted IPython session that shows the %%rjob magics")
    demo_parser.add_argument("--pause", type=float, default=0.0, help="seconds to pause between cells")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.pause)
    return 2


if __name__ == "__main__":
    sys.exit(main())
