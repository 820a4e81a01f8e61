"""ControlNets beside the video U-Net (vidiff.control.controlnet) and the control images they read
(vidiff.control.extractors). Sits beside vidiff.stages and vidiff.adapters: imports models, data, spec, utils."""
from vidiff.control.controlnet import Control, VideoControlNet, check_fits, read_controlnet, read_controlnet_config
from vidiff.control.extractors import EXTRACTORS, canny, control_images

__all__ = ["Control", "VideoControlNet", "check_fits", "read_controlnet", "read_controlnet_config", "EXTRACTORS",
           "canny", "control_images"]
