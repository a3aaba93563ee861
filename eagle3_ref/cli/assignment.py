"""``eagle3-ref assignment``: course assignments: a student skeleton, graded by the conformance suite."""

from __future__ import annotations

import argparse

from .common import fail


def add_parser(sub) -> None:
    asg = sub.add_parser("assignment", help="course assignments: a student skeleton, graded by the conformance suite")
    asg_sub = asg.add_subparsers(dest="assignment_command", metavar="ASSIGNMENT_COMMAND", required=True)
    am = asg_sub.add_parser("make", help="write a student skeleton: solution regions replaced by NotImplementedError")
    am.add_argument("out")
    am.set_defaults(func=make, command_name="assignment make", aliases={})
    ag = asg_sub.add_parser("grade", help="score a submission per task (fusion, head, ttt, tree, verify, generate) "
                                          "with the installed eagle3-ref's own tests")
    ag.add_argument("dir", nargs="?", default=".", help="a submission: a folder, a git clone or a .zip "
                                                         "(with --many: a folder of them)")
    ag.add_argument("--many", action="store_true", help="DIR holds one submission per sub-folder or .zip")
    ag.add_argument("--csv", metavar="OUT", help="with --many: write one row of per-task scores per student")
    ag.add_argument("--profile", default="quick",
                    help="hypothesis profile: smoke, student, quick (default), ci, dev, thorough")
    ag.add_argument("--test-timeout", type=float, default=120.0, metavar="SECONDS",
                    help="stop and fail one test after this long (an endless loop); default 120")
    ag.add_argument("--jobs", type=int, default=None, help="tasks graded at once (default: one per CPU core)")
    ag.set_defaults(func=grade, command_name="assignment grade", aliases={})


def make(args: argparse.Namespace) -> int:
    from ..tools.assignment import TASKS, make

    try:
        regions = make(args.out)
    except ValueError as err:
        return fail(args, err)
    count = sum(len(t) for t in regions.values())
    print(f"wrote the student skeleton to {args.out}: {count} solution regions in {len(regions)} modules, "
          f"tasks {', '.join(TASKS)}.\nStudents: read its README.md; grade with `python grade.py` there.")
    return 0


def grade(args: argparse.Namespace) -> int:
    import time

    from ..tools.assignment import TASKS, format_report, grade, grade_many, write_csv

    options = dict(profile=args.profile, test_timeout=args.test_timeout, jobs=args.jobs)
    try:
        if args.csv and not args.many:
            raise ValueError("--csv needs --many (a folder of submissions)")
        start = time.perf_counter()
        if args.many:
            grades = grade_many(args.dir, **options)
            for student, per_task in grades.items():
                print(f"== {student}\n{format_report(per_task)}\n")
            if args.csv:
                write_csv(grades, args.csv)
                print(f"wrote {args.csv}: {len(grades)} students, tasks {', '.join(TASKS)}")
            print(f"graded {len(grades)} submissions in {time.perf_counter() - start:.0f} s")
            return 0
        per_task = grade(args.dir, **options)
    except ValueError as err:
        return fail(args, err)
    print(format_report(per_task))
    return 0 if all(g.passed == g.total and not g.problem for g in per_task.values()) else 1
