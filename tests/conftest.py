import os, pytest

def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long end-to-end checks, not run by `make test` (run with `pytest -m slow`)")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
