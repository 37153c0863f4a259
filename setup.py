"""The templates to ship, computed from the tree; all other packaging metadata is in setup.cfg.

A py_modules-only distribution has no package folder for package_data, so the templates go in
as data_files, under <prefix>/share/botlxc/templates, where botlxc looks second. Every file
under templates/ ships: a new component's folder needs no line here (tests/test_dist.py
checks that none is left out).
"""
import os

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def template_data_files(base=HERE):
    """[(destination dir, [source files relative to base])] for every file under templates/."""
    found = []
    for folder, dirs, files in os.walk(os.path.join(base, "templates")):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        files = sorted(f for f in files if not f.startswith("."))
        if files:
            rel = os.path.relpath(folder, base)
            found.append((os.path.join("share", "botlxc", rel),
                          [os.path.join(rel, f) for f in files]))
    return found


if __name__ == "__main__":
    setup(data_files=template_data_files())
