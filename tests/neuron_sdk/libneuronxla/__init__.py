"""Test-only stand-in for ``libneuronxla`` (the Neuron compile cache). Verified only on inf2."""
