"""ControlNets beside the video U-Net (vidiff.control.controlnet) and the control images they read
(vidiff.control.extractors). Sits beside vidiff.stages and vidiff.adapters: imports models, data, spec, utils."""
from vidiff.control.controlnet import (RECORD_NAME, Control, VideoControlNet, check_fits, read_controlnet,
                                      read_controlnet_config, read_record)
from vidiff.control.extractors import EXTRACTORS, batch_control_images, canny, control_images, extract, track

__all__ = ["RECORD_NAME", "read_record", "Control", "VideoControlNet", "check_fits", "read_controlnet", "read_controlnet_config", "EXTRACTORS",
           "batch_control_images", "canny", "control_images", "extract", "track"]
