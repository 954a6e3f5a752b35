"""Data preparation (audio extraction, vocal separation, face/lip masks, dataset builder) and training data.

Deliberately empty: submodules are imported where used. `wan.data.masks` must stay importable by the
isolated mediapipe venv (numpy + cv2 only), so nothing here may import torch or other heavy packages.
"""
