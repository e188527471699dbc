import os

from hypothesis import HealthCheck, settings

# deadline=None: the first call of a numba kernel compiles (or loads its cache), which is slow
# once and would trip hypothesis' per-example deadline. Example counts are set per test.
settings.register_profile(
    "tinygpt", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("tinygpt")

DATA_DIR = os.environ.get("TINYGPT_DATA_DIR")
