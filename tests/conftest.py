import os

from hypothesis import HealthCheck, settings

# deadline=None: the first call of a numba kernel compiles (or loads its cache), which is slow
# once and would trip hypothesis' per-example deadline. Example counts are set per test.
settings.register_profile(
    "tinygpt", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
# CI (.ci/run sets HYPOTHESIS_PROFILE=ci): the same examples on every run, so a merge is judged
# on a fixed set; local runs draw new examples each time and keep finding new cases.
settings.register_profile("ci", parent=settings.get_profile("tinygpt"), derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "tinygpt"))

DATA_DIR = os.environ.get("TINYGPT_DATA_DIR")
