"""YAML input (model configs, board files) with bounded size: a few hundred bytes of nested
anchors and aliases ("billion laughs") must not expand into gigabytes of data or messages."""
from __future__ import annotations

from pathlib import Path

import yaml

MAX_YAML_BYTES = 1 << 20
# Nodes of the document with every alias expanded: a hand-written config or board file has
# a few hundred; an alias bomb has billions.
MAX_YAML_NODES = 100_000


def read_yaml(path: Path, error: type[Exception]):
    """The document in `path`, or `error` with a one-line message (unreadable, not YAML, too big)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise error(f"{path}: larger than {MAX_YAML_BYTES // 1024} KiB, which no config or board file needs")
    try:
        return load_yaml(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text") from None
    except (yaml.YAMLError, RecursionError, ValueError) as exc:  # ValueError: e.g. an int of 5000 digits
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise error(f"{path}: invalid YAML: {first}") from None


def load_yaml(text: str):
    """yaml.safe_load, refusing documents that expand to more than MAX_YAML_NODES nodes."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        count = expanded_nodes(node)
        if count > MAX_YAML_NODES:
            raise yaml.YAMLError(f"the aliases expand to more than {MAX_YAML_NODES} nodes (an alias bomb?)")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def expanded_nodes(root: yaml.Node) -> int:
    """Nodes of the tree the document stands for (an alias counts its whole target again),
    capped just past MAX_YAML_NODES; a node that contains itself counts as too many."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:  # recursive anchor: infinitely deep once expanded
            return MAX_YAML_NODES + 1
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            total = min(total + size(child), MAX_YAML_NODES + 1)
        open_nodes.discard(key)
        sizes[key] = total
        return total

    return size(root)
