"""Which hidden units may be permuted: the permutation spec (plain data), its inference from a traced
graph by rules per op family, its on-disk cache, and the transport of weights through permutations
or couplings.

`PermutationSpec` and `Layout` are re-exported here for code that imported them from the old
`modefuse.spec` module; inside the package they are imported from `permutation_spec`.
"""
from .permutation_spec import PLAIN, Layout, PermutationSpec  # noqa: F401  (the old module's names)
