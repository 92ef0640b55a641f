"""Hand-written kernels registered as ``torch.ops.tropfx.*`` (C++ on CPU, CUDA on GPU).

No kernels ship yet: max-plus, morphological and boolean operators land with their kernel issues,
each with a pure-torch reference twin that defines its semantics.
"""
