"""Graph rewrites, one pass a module (installed as ``onnxvq.passes``)."""
