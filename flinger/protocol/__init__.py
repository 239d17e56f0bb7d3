"""The typed contract between flinger and its remote tool, shipped inside the tool.

plans.py (what flinger asks each remote command to do), results.py (what each answers),
messages.py (the version, the command table and the JSON lines on the wire), codec.py
(dataclasses to and from JSON, checked), graph.py (the one topological order) and names.py
(the one plain-name rule). Standard library only, Python 3.9: both sides import it.
"""
