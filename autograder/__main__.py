"""python -m autograder grade SUBMISSION --out DIR
   python -m autograder grade-all SUBMISSIONS_DIR --out DIR --jobs N"""

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m autograder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grade", help="grade one submission (a diffusion.py or a folder)")
    g.add_argument("submission")
    g.add_argument("--out", required=True, help="folder for results.json and report.md")
    g.add_argument("--timeout", type=float, default=None, help="seconds per probe (default 20)")
    g.add_argument("--otter-results", default=None,
                   help="an Otter results.json (notebook checks) to merge into ours")
    a = sub.add_parser("grade-all", help="grade every submission in a folder")
    a.add_argument("submissions")
    a.add_argument("--out", required=True)
    a.add_argument("--jobs", type=int, default=2)
    a.add_argument("--timeout", type=float, default=None)
    args = parser.parse_args(argv)

    from .runtime.sandbox import Limits

    limits = Limits() if args.timeout is None else Limits(timeout_s=args.timeout)
    if args.command == "grade":
        import json
        from pathlib import Path

        from .grade import grade_submission

        otter = json.loads(Path(args.otter_results).read_text()) if args.otter_results else None
        results = grade_submission(args.submission, args.out, limits=limits, otter_results=otter)
        total = sum(t["max_score"] for t in results["tests"])
        print(f"score {results['score']:g} / {total:g}  ({results['execution_time']:.1f} s)")
        if results.get("output"):  # e.g. a wrong path or no diffusion.py: say so here too
            print(results["output"].strip())
        print(f"wrote {Path(args.out) / 'results.json'} and {Path(args.out) / 'report.md'}")
        return 0
    from .gradebook import grade_all

    summary = grade_all(args.submissions, args.out, jobs=args.jobs, limits=limits)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
