"""`python3 -m labq.daemon.nodes.agent`: how systemd's labq-agent@.service starts it."""
from .main import main

main()
