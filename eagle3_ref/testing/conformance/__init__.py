"""The conformance suite: the properties of the five core pieces and the end-to-end greedy
equality, reaching the implementation only through its adapter
(:class:`eagle3_ref.testing.adapter.Eagle3Adapter`).

It ships inside the package so that anyone with eagle3-ref installed can run it::

    python -m pytest --pyargs eagle3_ref.testing.conformance                       # the reference
    python -m pytest --pyargs eagle3_ref.testing.conformance --eagle3-impl=my.adapter
    python -m pytest --pyargs eagle3_ref.testing.conformance -m tree               # one piece

One module per piece, one marker per module: ``fusion``, ``head``, ``vocab``, ``ttt``,
``tree``, ``verify``, ``generate``. Expected values come from the reference's naive
versions (brute-force trees, unrolled drafting, uncached re-runs) and from transformers'
own ``generate``, never from the implementation under test.
"""
