"""flinger: deploy a distributed system onto many servers over SSH."""

__version__ = "0.1.0"
