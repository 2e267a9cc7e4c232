"""cutlib: Contrastive Unpaired Translation (Park, Efros, Zhang, Zhu, ECCV 2020) from first principles.

One module per concept, each introduced by a chapter of the course:
nce (InfoNCE, PatchNCE), networks, losses, config, models, train, data, metrics, stylegan2, viz.
"""

__version__ = "0.1.0"
