"""Datasets: resumable iteration (resumable.py), manifests, and one module of sources per modality."""
