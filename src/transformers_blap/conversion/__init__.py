"""
Conversion of checkpoints in other formats (the original BLAP release, LAION-CLAP HTS-AT) to this package's, and
the stage-1 model built from pretrained parts (CLAP's audio tower, BERT, a T5 configuration).
"""

from .htsat import convert_htsat_state_dict, htsat_config_from_state_dict
from .parts import stage1_from_pretrained_parts
from .release import original_release_folder
from .validation import ConversionError

__all__ = [
    "ConversionError",
    "convert_htsat_state_dict",
    "htsat_config_from_state_dict",
    "original_release_folder",
    "stage1_from_pretrained_parts",
]
