"""The run-directory protocol and the plumbing every process shares: file names, the journal, exit
codes and exit classes, event kinds, the run lock, child-process helpers, the chaos contract, and
the confinement of names read from files (``paths``).

This package is the ground floor: it imports only the standard library, so the worker, the
checkpoint writer, chaos and the supervisor can all stand on it (see ``docs/design.md``).
"""
