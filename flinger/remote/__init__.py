"""The remote tool: standard-library-only code that runs on the builder and the servers.

Python 3.9+ and nothing else is assumed on those hosts. flinger ships this package as one
zipapp (`flinger-remote.pyz`, see `flinger.zipapp`). Do not import anything outside the
standard library, `flinger.protocol` and `flinger.remote` here.
"""
