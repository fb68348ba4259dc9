"""Exporting and describing real ViT models (installed as ``onnxvq.models``).

The exporters need the ``[export]`` extra (torch, timm, transformers); importing this package
does not.
"""
