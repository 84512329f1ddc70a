"""Settings for the whole suite."""

import os

# `make test` runs pytest inside make, whose MAKEFLAGS/MAKELEVEL would reach every `make` a test starts in a
# generated project: that make then prints "Entering directory" lines around its output and joins the outer
# jobserver. The tests run the commands a user types in a shell, so they get a shell's environment.
for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):
    os.environ.pop(name, None)

# Under pytest-xdist (`make test` runs 2 workers) each worker gets its share of the cores for torch's
# threads, here and in the processes its tests start: with every worker on every core, OpenMP's spinning
# threads slow each other (and 2-process gloo runs) down several times over.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1 and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // _workers))


# The files that take longest (measured in `make test`'s durations on 2 cores), started first: with a file
# per worker, a long file that starts last becomes the run's tail while the other worker idles.
LONGEST_FIRST = (
    "tests/generator/test_roadmap_commands.py",
    "tests/generator/test_notebooks.py",
    "tests/distributed/test_engines.py",
    "tests/generator/test_new_generated_repo.py",
)


def pytest_collection_modifyitems(items: list) -> None:
    def rank(item) -> int:
        path = item.nodeid.split("::")[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: every file keeps its own order
