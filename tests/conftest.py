"""Settings for the whole suite."""

import os

# `make test` runs pytest inside make, whose MAKEFLAGS/MAKELEVEL would reach every `make` a test starts in a
# generated project: that make then prints "Entering directory" lines around its output and joins the outer
# jobserver. The tests run the commands a user types in a shell, so they get a shell's environment.
for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):
    os.environ.pop(name, None)
