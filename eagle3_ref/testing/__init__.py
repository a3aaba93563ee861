"""Testing support: the adapter seam (:mod:`.adapter`) and hypothesis strategies
(:mod:`.strategies`), for this project's tests and for checking other implementations."""

# Which implementation the conformance suite judges, when --eagle3-impl does not say: read by
# the pytest plugin (loaded whenever pytest starts, so it imports no torch) and by the adapter
# loader, both of which import it from here.
ENV_VAR = "EAGLE3_IMPL"
