"""swarmfl.core: the sans-IO gossip protocol: bytes and arrays in, bytes out.

Frames (:mod:`~swarmfl.core.wire`), quantisers (:mod:`~swarmfl.core.quant`, their names in
:mod:`~swarmfl.core.codecs`), error-feedback model streams (:mod:`~swarmfl.core.stream`), the
staleness-weighted merge (:mod:`~swarmfl.core.merge`), the Byzantine-robust merges
(:mod:`~swarmfl.core.robust`) with their per-peer record (:mod:`~swarmfl.core.ledger`), and the
gossip node that ties them together (:mod:`~swarmfl.core.node`). Nothing here does I/O, reads a
clock or imports torch, asyncio or a config file: numpy (and scipy's BLAS) only.
"""
