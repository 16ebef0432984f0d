"""What every stage's `main` shares: logging set-up, and turning a user's mistake or a stop signal into a short
message and a non-zero exit."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.errors import UserError
from pipeline.tracking.signals import Interrupted, signals_raise

log = logging.getLogger("pipeline")

# A user error exits 2, like argparse's usage errors; 1 stays for crashes, which keep their traceback.
USER_ERROR_EXIT_CODE = 2
# What a shell reports for Ctrl-C; a KeyboardInterrupt raised by other means than our handler counts as one.
SIGINT_EXIT_CODE = 130


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
    # Libraries that log every HTTP call or migration step at INFO drown the stage's own lines.
    for noisy in ("httpx", "alembic", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Run a stage body: a UserError becomes its message on stderr and exit code 2; SIGINT or SIGTERM stops it
    (its MLflow run ends KILLED) with exit code 128 + the signal; neither shows a traceback.
    """
    configure_logging()
    try:
        with signals_raise():
            yield
    except UserError as error:
        log.error("%s", error)
        sys.exit(USER_ERROR_EXIT_CODE)
    except KeyboardInterrupt as interrupt:
        reason = str(interrupt) if isinstance(interrupt, Interrupted) else "stopped by SIGINT"
        log.error("%s: outputs written by an earlier run are unchanged; rerun the stage to continue", reason)
        sys.exit(interrupt.exit_code if isinstance(interrupt, Interrupted) else SIGINT_EXIT_CODE)
