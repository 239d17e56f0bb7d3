"""Stand-in for GitMirror's worker/client.py: reads ./config.yaml the same way, reports the
coordinator it would register with and stays up. Replace it with the upstream worker directory."""

import time
from pathlib import Path


def read_config(path: Path) -> dict[str, str]:
    """The flat `key: value` lines of config.yaml (all GitMirror's config uses)."""
    config = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            config[key.strip()] = value.strip()
    return config


def main() -> None:
    config = read_config(Path("config.yaml"))
    print(f"(stand-in) worker: coordinator {config['where_coor_ip_addr']}, clones in {config['clone_disk_path']}")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
