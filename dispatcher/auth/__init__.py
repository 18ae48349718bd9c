"""API keys, roles and who may call what."""
