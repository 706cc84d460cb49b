"""Small jobs of the tests' own, run as scripts under the worker API (and the supervisor)."""
