"""ShapesWorld: the embedded, procedural image-caption benchmark (see world.py, captions.py, captions_zh.py)."""

from datamodules.shapesworld.datamodule import ShapesWorldDataModule
from datamodules.shapesworld.datasets import TASKS, TASKS_ZH, CaptionedScenes, CrossLingualScenes, ZeroShotScenes
from datamodules.shapesworld.probes import PROBES, ProbeScenes
from datamodules.shapesworld.world import HELD_OUT, Scene, Thing, render, sample_scene

__all__ = [
    "HELD_OUT", "PROBES", "TASKS", "TASKS_ZH", "CaptionedScenes", "CrossLingualScenes", "ProbeScenes", "Scene",
    "ShapesWorldDataModule", "Thing", "ZeroShotScenes", "render", "sample_scene",
]  # fmt: skip
