"""Other libraries' caches as rows of the same tables: diffusers' hooks and cache-dit's DBCache."""
from methods.peers.base import PeerMethod, PeerRun, PeerUnsupported
from methods.peers.cachedit import DBCache
from methods.peers.diffusers_hooks import (FasterCache, FirstBlockCache, MagCache, PyramidAttentionBroadcast,
                                           TaylorSeerCache)

PEERS = (FirstBlockCache, TaylorSeerCache, MagCache, FasterCache, PyramidAttentionBroadcast, DBCache)

__all__ = ["PEERS", "PeerMethod", "PeerRun", "PeerUnsupported"]
