"""``craton-server``: the production node's entry point.

This build ships the storage log, its tools and the simulator; the network node (binary
protocol, probes, metrics, replication) is not part of it yet. The command says so in one
line and exits with status 2 rather than pretending to serve.
"""

from __future__ import annotations

import sys


def main() -> int:
    print(
        "craton-server: the network node is not available in this build; "
        "use `craton demo` or `craton verify DATA_DIR`",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
