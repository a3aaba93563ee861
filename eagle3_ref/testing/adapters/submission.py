"""A student's submission, as the grader runs it: the reference's own adapter over a copy of
the package that holds the student's modules (``eagle3-ref assignment grade``).

The grader (:func:`eagle3_ref.tools.assignment.grade`) copies the reference package under another
name, puts the submission's module for one task in place of the reference's, and names that
copy in ``$EAGLE3_SUBMISSION_PACKAGE``. The tests, the oracles and this adapter come from
the installed eagle3-ref, never from the submission.
"""

import os

from ..adapter import ReferenceAdapter

PACKAGE_VAR = "EAGLE3_SUBMISSION_PACKAGE"

if not os.environ.get(PACKAGE_VAR):
    raise ImportError(f"eagle3_ref.testing.adapters.submission: set ${PACKAGE_VAR} to the package to grade "
                      "(eagle3-ref assignment grade does)")

ADAPTER = ReferenceAdapter(package=os.environ[PACKAGE_VAR])
ADAPTER.name = "submission"
