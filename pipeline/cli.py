"""What every stage's `main` shares: logging set-up and turning a user's mistake into a short message."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.errors import UserError

log = logging.getLogger("pipeline")

# A user error exits 2, like argparse's usage errors; 1 stays for crashes, which keep their traceback.
USER_ERROR_EXIT_CODE = 2


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
    # Libraries that log every HTTP call or migration step at INFO drown the stage's own lines.
    for noisy in ("httpx", "alembic", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Run a stage body; a UserError becomes its message on stderr and exit code 2, with no traceback."""
    configure_logging()
    try:
        yield
    except UserError as error:
        log.error("%s", error)
        sys.exit(USER_ERROR_EXIT_CODE)
