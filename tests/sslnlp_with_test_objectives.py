"""`python tests/sslnlp_with_test_objectives.py pretrain ...`: the sslnlp command line with the test suite's
objectives registered (tests/objectives_for_tests.py), for tests that run training in a subprocess."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import objectives_for_tests  # noqa: E402,F401  (registers the test objectives)
from sslnlp.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
