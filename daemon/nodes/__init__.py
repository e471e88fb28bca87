"""Talking to nodes: the registry (every node's live view, reconciliation, runs), one link per
node (link.py), how a link reaches its agent (transport.py, ssh.py), and the agent itself
(agent/, the stdlib-only program that runs on every node)."""
