"""A dynamic KV cache that grows in place (the decode loop's cache, `engines/hf.py`).

transformers' `DynamicCache` appends each new token with `torch.cat`: every decoding step copies
the whole cache of every layer into a new tensor one column wider. On CPU that is a copy of the
entire cache per step (64 rows × 650 tokens of SmolLM2-135M: 1.9 GB per step), and a run of
ever-larger allocations that the allocator cannot reuse, so resident memory climbs well past the
cache's own size. `growing_cache` keeps each layer's keys and values in buffers with spare
columns, writes new tokens into them, and reallocates only when they are full (by a quarter more,
at least `CHUNK` columns), so a step copies nothing. Everything else is `DynamicCache`'s own code:
`keys`/`values` read as views of the filled columns, and assigning them (compaction, cropping,
prefix copies) replaces the buffer.
"""

from __future__ import annotations

from typing import Any

CHUNK = 256  # spare columns added at least when a buffer is full (a turn of a few hundred tokens: ~1-2 grows)


def growing_cache(config: Any) -> Any:
    """A `DynamicCache` for `config` whose full-attention layers grow in place (sliding-window and
    other special layers keep transformers' own classes)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def _layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class _GrowingLayer(DynamicLayer):
        """A `DynamicLayer` whose keys and values are views of buffers with spare columns."""

        def __init__(self, **kwargs: Any):
            self._k = self._v = None
            self._n = 0
            super().__init__(**kwargs)

        @property
        def keys(self) -> Any:
            return None if self._k is None else self._k[..., :self._n, :]

        @keys.setter
        def keys(self, value: Any) -> None:
            self._k = value
            self._n = 0 if value is None or value.dim() < 2 else value.shape[-2]

        @property
        def values(self) -> Any:
            return None if self._v is None else self._v[..., :self._n, :]

        @values.setter
        def values(self, value: Any) -> None:
            self._v = value  # keys and values always change together; `_n` follows the keys

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            import torch

            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n, new = self._n, key_states.shape[-2]
            if self._k is None or self._k.dim() < 2 or self._k.numel() == 0:
                self._k, self._v, n = None, None, 0
            if self._k is None or n + new > self._k.shape[-2]:
                cap = max(n + new + CHUNK, (n + new) * 5 // 4)
                shape = (*key_states.shape[:-2], cap, key_states.shape[-1])
                k = torch.empty(shape, dtype=key_states.dtype, device=key_states.device)
                v = torch.empty((*value_states.shape[:-2], cap, value_states.shape[-1]), dtype=value_states.dtype,
                                device=value_states.device)
                if n:
                    k[..., :n, :] = self._k[..., :n, :]
                    v[..., :n, :] = self._v[..., :n, :]
                self._k, self._v = k, v
            self._k[..., n:n + new, :] = key_states
            self._v[..., n:n + new, :] = value_states
            self._n = n + new
            return self.keys, self.values

    return _GrowingLayer


def GrowingLayer() -> Any:  # noqa: N802 - a class built on first use (transformers is imported lazily)
    global _GROWING
    if _GROWING is None:
        _GROWING = _layer_class()
    return _GROWING()


_GROWING: type | None = None
