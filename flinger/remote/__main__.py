"""Entry point of the remote tool: `python3 flinger-remote.pyz COMMAND [ARGS]`.

Commands that need a plan read it as JSON on stdin; every command writes JSON lines
(`{"event": ...}`) to stdout, ending with `{"event": "result", "ok": ...}`.
"""

import importlib
import sys
from typing import List, Optional

# command -> module in flinger.remote that defines `main(argv: list) -> int`
COMMANDS = {
    "build": "pkgbuild",
    "unpack": "unpack",
    "install": "install",
    "activate": "install",
    "deactivate": "install",
    "uninstall": "install",
    "clean": "install",
    "status": "install",
    "history": "releases",
    "rollback": "releases",
    "lock": "lock",
    "verify-share": "shamir",
    "prereqs": "prereqs",
    "registry-push": "registry",
}


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        sys.stderr.write("usage: flinger-remote {%s} ...\n" % ",".join(sorted(COMMANDS)))
        return 2
    module = importlib.import_module("flinger.remote." + COMMANDS[args[0]])
    return int(module.main(args))


if __name__ == "__main__":
    sys.exit(main())
