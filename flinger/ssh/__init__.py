"""SSH: strict host-key checking, connections to servers, and fan-out over many servers."""
