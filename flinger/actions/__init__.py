"""What flinger does: each action makes a plan (data) and carries it out over SSH."""
