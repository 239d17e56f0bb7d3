"""The deploy engine: a run, its operations, and how they go through a fleet.

run.py (`open_run`: the one composition root of a run: id, sinks, hosts, store),
hosts.py (what the engine needs of a host, and `open_hosts`, the one place every command's
host pool is made, from its `TRANSPORTS` registry), local.py (the local transport),
stores/ (where packages come from: `STORES`), plan.py (each server's install plan, data),
install.py and operations.py (one class per deploy subcommand), session.py (connect, the
tool, the lock), remote.py (the remote tool over a transport, typed by flinger/protocol),
strategy.py (rollouts: the `Strategy` seam and `BatchRollout`), execute.py (`execute`),
fanout.py and results.py (per-server work, and what it came to), report.py (what a failed
step says).
"""
