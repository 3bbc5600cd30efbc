"""nfaudio models: one factory over a registry of NFNet-family (and any timm) backbones with audio heads.

``create_model(name, num_classes, pretrained=False, head="sed")`` builds an :class:`AudioClassifier`
(log-mel frontend -> optional SpecAugment -> one-channel timm backbone -> SED or pooled head) that maps a
``(B, T)`` waveform to :class:`ModelOutput` clip ``(B, C)`` and frame ``(B, F, C)`` logits, and
(``forward_embedding``) to ``(B, D)`` window embeddings.
``list_models()`` shows the registry; ``save_model`` / ``load_model`` keep the config with the weights.
NFNets: Brock et al. 2021, "High-Performance Large-Scale Image Recognition Without Normalization".
"""

from nfaudio.models.classifier import AudioClassifier, EmbeddingOutput, ModelOutput
from nfaudio.models.factory import create_model, load_checkpoint, load_model, prediction_meta, save_model
from nfaudio.models.heads import PooledHead, SEDHead
from nfaudio.models.pretrained import PretrainedWeightsError, load_backbone_weights
from nfaudio.models.registry import ModelConfig, list_models

__all__ = [
    "AudioClassifier",
    "EmbeddingOutput",
    "ModelConfig",
    "ModelOutput",
    "PooledHead",
    "PretrainedWeightsError",
    "SEDHead",
    "create_model",
    "list_models",
    "load_backbone_weights",
    "load_checkpoint",
    "load_model",
    "prediction_meta",
    "save_model",
]
