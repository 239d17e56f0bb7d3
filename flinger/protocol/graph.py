"""The one topological order, for everything that comes after something else: package
composites and their members, services and the services they start `after`, deployment
waves, builds. Built on the standard library's graphlib (Python 3.9).
"""

import graphlib
from typing import Dict, Iterable, List, Mapping


class Cycle(ValueError):
    """The nodes depend on each other in a cycle; the message shows it (a -> b -> a)."""

    def __init__(self, nodes: List[str]) -> None:
        super().__init__(" -> ".join(nodes))
        self.nodes = nodes


def _sorter(after: Mapping[str, Iterable[str]]) -> "graphlib.TopologicalSorter[str]":
    sorter: "graphlib.TopologicalSorter[str]" = graphlib.TopologicalSorter()
    for node, before in after.items():
        sorter.add(node, *before)
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        cycle = [str(n) for n in exc.args[1]]
        raise Cycle(list(reversed(cycle))) from None
    return sorter


def layers(after: Mapping[str, Iterable[str]]) -> List[List[str]]:
    """The nodes in layers: each node in the layer after the last of the nodes it comes
    after (its longest path from a node that comes after nothing). `after` maps each node
    to those it comes after; a node only named there is a node too. Within a layer, nodes
    keep the order of `after` (then the order they were first named in)."""
    sorter = _sorter(after)
    seen = {node: index for index, node in enumerate(after)}
    for before in after.values():
        for other in before:
            seen.setdefault(other, len(seen))
    out: List[List[str]] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=lambda n: seen[n])
        out.append(ready)
        sorter.done(*ready)
    return out


def ordered(after: Mapping[str, Iterable[str]]) -> List[str]:
    """Every node, each after those it comes after (layer by layer)."""
    return [node for layer in layers(after) for node in layer]


def depth(after: Mapping[str, Iterable[str]]) -> Dict[str, int]:
    """Each node's layer number (0: it comes after nothing)."""
    return {node: number for number, layer in enumerate(layers(after)) for node in layer}


def scheduler(after: Mapping[str, Iterable[str]]) -> "graphlib.TopologicalSorter[str]":
    """A prepared graphlib sorter, for work that runs nodes as soon as they are ready
    (get_ready / done): the builds."""
    return _sorter(after)
