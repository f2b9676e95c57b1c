"""Test-only stand-in for ``neuronxcc`` (the Neuron compiler). Verified only on inf2.

optimum-neuron reads ``neuronxcc.__version__`` at import (``get_neuronxcc_version``); nothing here
compiles. The version is the one optimum-neuron 0.4.5 pins, marked as a stand-in.
"""

__version__ = "2.21.33363.0+stand.in"
