"""Tools built on the core and the cost-aware tree, none of which the core imports:

* :mod:`.demo`        decode a prompt with the toy pair, accepted tokens marked
* :mod:`.bench`       tau and speed against plain decoding and SpS, as the field measures them
* :mod:`.shapes`      the same cycle timed at a real model's shapes (random weights)
* :mod:`.check_head`  validate a head directory; which layers each engine would tap
* :mod:`.ablate`      the paper's ablation at toy scale
* :mod:`.assignment`  course assignments: a student skeleton, graded by the conformance suite
* :mod:`.gpu_check`   the project's GPU check in one command
"""
