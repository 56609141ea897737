"""What every Craton console script (``craton``, ``craton-server``, ``platform-app``) shares on
its command line: bad usage is one line on stderr and exit 2, never argparse's usage dump."""

from __future__ import annotations

import argparse
from typing import NoReturn

EXIT_USAGE = 2  # bad usage or bad configuration, for every console script


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line: what is wrong and where to look."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")
