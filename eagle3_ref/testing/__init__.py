"""Testing support: the adapter seam (:mod:`.adapter`) and hypothesis strategies
(:mod:`.strategies`), for this project's tests and for checking other implementations."""
