"""Producers of recording files: the synthetic generators and the converters of public data
sets (TVSD, Allen Brain Observatory). Each writes the HDF5 layout that
:class:`neurobridge.data.RecordingDataset` reads; the data pipeline never imports them.

Import the producer you need: ``neurobridge.datasets.synthetic``,
``neurobridge.datasets.tvsd``, ``neurobridge.datasets.allen`` (pynwb).
"""
