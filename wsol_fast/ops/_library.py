"""The `wsol_fast` torch.library ops: loading of the C++ library (csrc/), fake and autograd registration.

STUB: replaced by the C++ operator work (issue 4). Until then no native op is live.
"""
CPP_AVAILABLE = False
