"""``dispatcher worker`` runs this: dramatiq's worker command, with the service's logs.

dramatiq is started with ``--skip-logging``, so its main process logs through
:func:`dispatcher.observability.logging.configure_logging` (JSON, scrubbed) like every
other process; each worker process configures the same again when it loads ``workers.main``.
"""

from __future__ import annotations

import sys

from dramatiq.cli import main

from dispatcher.observability.logging import configure_logging

if __name__ == "__main__":
    configure_logging()
    sys.exit(main())
