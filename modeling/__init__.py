"""The model side shared by training and every prediction path: views and features, pooling, whole-document heads (window_heads), what the outputs mean (label_space: one label or a label set, their loss, probabilities and decisions), the classifier's load/save with its ``spanwise`` record (classifier), scoring views on the device and pooling them into a document's logits (scoring), prediction output and metrics.

Imported by ``trainer`` (training and evaluation), ``trainer.predict``, the Python API
(``modeling.classifier.Classifier``) and the Beam prediction pipeline
(``beam_pipelines.inference``); it imports only ``tokenization``, ``schemas``, ``spanwise_io``, torch and
transformers, never ``trainer`` or ``beam_pipelines``.
"""
