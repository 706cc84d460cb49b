"""``python -m runner campaign`` for the paced test job (:mod:`tests.jobs.paced`): the same command line,
with the paced job's options (``--steps``, ``--step-time``) in place of the built-in job's.

    python tests/jobs/paced_campaign.py --trials 4 --out DIR [campaign options]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

from chaos.campaign import campaign_main  # noqa: E402
from rundir.errors import print_error  # noqa: E402
from rundir.exitcodes import UserError  # noqa: E402
from tests.jobs.paced import PACED  # noqa: E402


def main(argv: list[str]) -> int:
    try:
        return campaign_main(argv, PACED, program=(sys.executable, str(Path(__file__).resolve())))
    except UserError as exc:
        print_error(str(exc))
        return int(exc.code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
