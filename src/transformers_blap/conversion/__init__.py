"""Conversion of checkpoints in other formats (the original BLAP release, LAION-CLAP HTS-AT) to this package's."""

from .htsat import convert_htsat_state_dict, htsat_config_from_state_dict
from .release import original_release_folder
from .validation import ConversionError

__all__ = ["ConversionError", "convert_htsat_state_dict", "htsat_config_from_state_dict", "original_release_folder"]
