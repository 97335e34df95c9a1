"""The model side shared by training and every prediction path: views and features, pooling, whole-document heads (window_heads), the classifier's load/save with its ``spanwise`` record, prediction output and metrics.

Imported by ``trainer`` (training and evaluation), ``trainer.predict``, the Python API
(``modeling.classifier.Classifier``) and the Beam prediction pipeline
(``beam_pipelines.inference``); it imports only ``tokenization``, ``spanwise_io``, torch and
transformers, never ``trainer`` or ``beam_pipelines``.
"""
