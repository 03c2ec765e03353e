"""python -m autograder grade SUBMISSION --out DIR [--memory-limit-mb N]
   python -m autograder grade-all SUBMISSIONS_DIR --out DIR --jobs N [--memory-limit-mb N]
   python -m autograder check [--memory-limit-mb N]     (can the grader grade here? its memory)

Exit status 0 once a submission is graded, whatever its score; 2 with "grader environment error"
when the grader cannot grade here (then no results.json and no gradebook are written)."""

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m autograder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grade", help="grade one submission (a diffusion.py or a folder)")
    g.add_argument("submission")
    g.add_argument("--out", required=True, help="folder for results.json and report.md")
    a = sub.add_parser("grade-all", help="grade every submission in a folder")
    a.add_argument("submissions")
    a.add_argument("--out", required=True)
    a.add_argument("--jobs", type=int, default=2)
    c = sub.add_parser("check", help="check that the grader can grade here; print its memory "
                                     "budget as JSON")
    for p in (g, a, c):
        p.add_argument("--timeout", type=float, default=None, help="seconds per probe (default 10)")
        p.add_argument("--memory-limit-mb", type=int, default=None,
                       help="the memory limit to grade within (default: the container's, from "
                            "its cgroup, else the machine's memory)")
    args = parser.parse_args(argv)

    from .runtime.sandbox import GraderEnvironmentError, Limits

    limits = Limits(memory_limit_mb=args.memory_limit_mb)
    if args.timeout is not None:
        limits.timeout_s = args.timeout
    try:
        if args.command == "grade":
            return _grade(args, limits)
        if args.command == "check":
            return _check(limits)
        from pathlib import Path

        from .gradebook import grade_all

        if not Path(args.submissions).is_dir():
            parser.error(f"grade-all: {args.submissions} is not a folder; give the folder that "
                         "holds one diffusion.py (or one folder) per student")
        limits.memory_shares = max(1, args.jobs)
        print(grade_all(args.submissions, args.out, jobs=args.jobs, limits=limits))
        return 0
    except GraderEnvironmentError as exc:
        print(str(exc), file=sys.stderr)
        print("nothing was graded: this is a fault of the grader's environment, not of a "
              "submission", file=sys.stderr)
        return 2


def _check(limits):
    import json

    from .grade import default_hide
    from .runtime.sandbox import Sandbox

    with Sandbox(hide=default_hide(), limits=limits) as sandbox:
        budget = sandbox.check()
    print(budget.describe(), file=sys.stderr)
    print(json.dumps(vars(budget)))
    return 0


def _grade(args, limits):
    from pathlib import Path

    from .grade import grade_submission

    results = grade_submission(args.submission, args.out, limits=limits)
    total = sum(t["max_score"] for t in results["tests"])
    print(f"score {results['score']:g} / {total:g}  ({results['execution_time']:.1f} s)")
    if results.get("output"):  # e.g. a wrong path or no diffusion.py: say so here too
        print(results["output"].strip())
    print(f"wrote {Path(args.out) / 'results.json'} and {Path(args.out) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
