"""A Ctrl-C that reaches flinger's process group while it starts an ssh: the new child is
out of reach (flinger/ssh/detached.py), however the signal falls."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Four threads start children (as a rollout's workers start ssh) while another process sends
# SIGINT to the program's process group every millisecond; the program's handler counts them.
PROGRAM = textwrap.dedent(
    """
    import os, signal, subprocess, sys, threading
    from flinger.ssh import detached
    heard = []
    signal.signal(signal.SIGINT, lambda *_: heard.append(1))
    died = []
    def work():
        for _ in range(150):
            if detached.run(["true"]).returncode != 0:
                died.append(1)
    storm = subprocess.Popen([sys.executable, "-c", (
        "import os, signal, time\\n"
        "while True:\\n"
        f"    os.killpg({os.getpgrp()}, signal.SIGINT); time.sleep(0.001)\\n"
    )], start_new_session=True)
    workers = [threading.Thread(target=work) for _ in range(4)]
    for w in workers: w.start()
    for w in workers: w.join()
    storm.kill()
    print(len(died), len(heard))
    """
)


def test_children_started_under_a_storm_of_sigint_all_live() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=300, start_new_session=True
    )
    assert done.returncode == 0, done.stderr
    died, heard = map(int, done.stdout.split())
    assert heard > 50, f"the storm reached the program {heard} times"  # the signals did fall
    assert died == 0, f"{died} of 600 children died"
