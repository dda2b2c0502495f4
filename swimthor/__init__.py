"""swimthor: SIP infrastructure as a peer-to-peer overlay (SWIM membership, rendezvous routing)."""

__version__ = "0.1.0"
