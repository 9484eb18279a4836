"""ecomvlm: adapt vision-language models to e-commerce at scale, and evaluate them.

Sub-packages (installed from the repository's top-level folders):
  ecomvlm.recipes       model composition (recipes/models) and training entry points
  ecomvlm.conf          Hydra config groups
  ecomvlm.data_modules  synthetic data, curation, shards, mixtures, loaders
  ecomvlm.eval          benchmarks, scorers, inference backends, reports
  ecomvlm.launcher      SLURM submission
"""

__version__ = "0.1.0"
