"""The codec names: the one list that configs, the CLI, the planner and the node take them from.

The codecs themselves are in :mod:`swarmfl.core.quant`, which exports these names too. They live
in a module of their own, free of numpy, so that the command line can offer them as choices
without importing numpy (``swarmfl status`` starts without it).
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["CODECS", "DEFAULT_CODEC", "CodecName"]

CodecName = Literal["fp32", "int8", "int4"]
"""A codec's name: lossless float32, or per-block symmetric int8 or int4."""

CODECS: tuple[CodecName, ...] = get_args(CodecName)
"""Every codec name, in the order above."""

DEFAULT_CODEC: CodecName = "fp32"
"""The codec when none is configured: lossless, and every fp32 frame is an exact keyframe, so a
lost frame costs nothing but itself; int8 and int4 are chosen to save radio bytes."""
