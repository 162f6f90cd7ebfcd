"""Official StyleNAT checkpoints (github.com/SHI-Labs/StyleNAT) <-> our formats, above `stylenat.snapshot`.

layout         reading reference files safely, telling them from others, their containers and tables
config         our generator config inferred from a reference generator state dict
generator      generator key mapping, reference -> ours and back
discriminator  wavelet-D key mapping, reference -> ours
convert        whole files -> our snapshot / starting weights; load_generator for any generator file
"""

from stylenat.reference.config import infer_reference_config
from stylenat.reference.convert import (
    CONVERSION_VERSION,
    load_generator,
    load_reference,
    reference_to_snapshot,
    reference_to_training_weights,
)
from stylenat.reference.discriminator import convert_discriminator_state
from stylenat.reference.generator import LAYOUTS, convert_generator_state, snapshot_to_reference
from stylenat.reference.layout import (
    SAFE_REFERENCE_GLOBALS,
    is_reference_checkpoint,
    read_reference_checkpoint,
    reference_checkpoint,
    reference_relative_position_index,
)

__all__ = [
    "CONVERSION_VERSION",
    "LAYOUTS",
    "SAFE_REFERENCE_GLOBALS",
    "convert_discriminator_state",
    "convert_generator_state",
    "infer_reference_config",
    "is_reference_checkpoint",
    "load_generator",
    "load_reference",
    "read_reference_checkpoint",
    "reference_checkpoint",
    "reference_relative_position_index",
    "reference_to_snapshot",
    "reference_to_training_weights",
    "snapshot_to_reference",
]
