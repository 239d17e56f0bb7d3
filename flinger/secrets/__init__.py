"""Client-side secrets: the redacted `Secret` type, the deployment CA and per-server
certificates, and private (0600/0700) atomic file writing."""
