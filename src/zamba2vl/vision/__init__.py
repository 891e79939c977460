"""The vision tower of Zamba2-VL: Qwen2.5-VL's ViT with window attention, and the patch merger."""

from zamba2vl.vision.tower import VisionTower
from zamba2vl.vision.weights import load_vision_weights, vision_state_dict_from_checkpoint

__all__ = ["VisionTower", "load_vision_weights", "vision_state_dict_from_checkpoint"]
